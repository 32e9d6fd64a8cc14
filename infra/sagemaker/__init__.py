"""SageMaker: launching training jobs (`job launch sagemaker|local|status|fetch`), in the cloud or locally."""
