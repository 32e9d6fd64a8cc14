"""The container contract: what runs inside the image, as SageMaker (or `docker run`) starts it."""
