"""Publishing a finished run: destinations (S3, the Hugging Face Hub, a folder) behind one interface, and `job push`."""
