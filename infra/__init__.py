"""Cloud glue around the training job: S3 helpers, publishing a finished run (S3, Hugging Face Hub)."""
