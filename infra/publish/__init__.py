"""Publishing a finished run: destinations (S3, the Hugging Face Hub) behind one interface, and `job push`."""
