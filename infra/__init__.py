"""Around the training job: where it runs and where its results go. It imports :mod:`job`; `job` never imports it.

- :mod:`infra.container`: the image's entry point (the SageMaker training-job contract, several hosts, SIGTERM);
- :mod:`infra.sagemaker`: `job launch` (the SDK's local mode and SageMaker itself), inputs, job status;
- :mod:`infra.publish`: `job push` and the publishing after `job run`: a finished run to S3, the Hugging Face Hub
  and/or a folder, each destination one class in :mod:`infra.publish.destinations`.

`job push` and `job launch` join the `job` program through entry points (pyproject.toml; :mod:`job.plugins`).
"""
