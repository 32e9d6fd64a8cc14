"""The SageMaker launcher (`job launch sagemaker|status|fetch`) against real parts on loopback.

* S3 is a real SeaweedFS server (the ``s3_env`` / ``s3_bucket`` fixtures): uploads and downloads
  really happen.
* The SageMaker control plane is a moto server (``moto.server.ThreadedMotoServer``) - a STAND-IN:
  it accepts CreateTrainingJob, records it and reports the job Completed at once; it runs nothing
  and checks no IAM role, image or S3 location. So these tests check the exact request our
  launcher sends (captured as the SDK hands it to botocore) and how we read a job back, not what
  SageMaker itself would do with the request. The container side is tested in test_container.py.
* CloudWatch Logs is the same moto server: it serves what the SDK's log streaming reads
  (DescribeLogStreams, GetLogEvents), so `--wait` really streams through ``TrainingJob.wait(logs=True)``;
  the log lines are put there by the test, since moto's training jobs run nothing and log nothing.
* The SageMaker SDK's own configuration (config.yaml) is an empty file unless a test writes one.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import tarfile
from pathlib import Path

import pytest

from infra.container import contract
from infra.container import entry as container
from infra.container import inputs as container_inputs
from infra.sagemaker import cli as launch_cli
from infra.sagemaker import inputs as sagemaker_inputs
from infra.sagemaker import jobs as sagemaker_jobs
from infra.sagemaker import launch as sagemaker_launch
from job.config import resolve_config

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/rag-embed-finetune:1.0"
NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_sagemaker():
    """A moto server on loopback standing in for the SageMaker API."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def sdk_config_file(tmp_path, monkeypatch):
    """The SageMaker SDK's config.yaml (admin and user): an empty file the test may write."""
    path = tmp_path / "sagemaker-config.yaml"
    path.write_text("")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(path))
    monkeypatch.setenv("SAGEMAKER_ADMIN_CONFIG_OVERRIDE", str(path))
    return path


@pytest.fixture()
def aws(s3_env, moto_sagemaker, monkeypatch, sdk_config_file):
    """S3 = SeaweedFS, SageMaker and CloudWatch Logs = moto; the role is not simulated against IAM (moto cannot)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto_sagemaker)
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", moto_sagemaker)
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    for var in ("SAGEMAKER_ROLE", "SAGEMAKER_BUCKET", "AWS_REGION", "JOB_EPOCHS"):
        monkeypatch.delenv(var, raising=False)
    return s3_env


def _beir(path: Path) -> Path:
    (path / "qrels").mkdir(parents=True)
    (path / "corpus.jsonl").write_text('{"_id": "d1", "text": "Revenue grew 6 percent."}\n')
    (path / "queries.jsonl").write_text('{"_id": "q1", "text": "How did revenue change?"}\n')
    (path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return path


def _cfg(**values):
    return resolve_config(cli=values, environ={})


def _keys(s3, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


# --- the request -------------------------------------------------------------------------------
def test_launch_uploads_inputs_and_sends_the_exact_request(
    aws, s3_bucket, tmp_path, pairs_file, tiny_model_path, capsys
):
    cfg = _cfg(
        data=str(pairs_file), model=str(tiny_model_path), eval_data=str(_beir(tmp_path / "beir")),
        epochs=2, learning_rate=5e-5, matryoshka_dims="32,16", check_column_order=False, query_prompt="query: ",
        run_dir="runs/local-only", s3_uri="s3://elsewhere/x",
    )  # fmt: skip
    spec = sagemaker_launch.LaunchSpec(
        role=ROLE, region="us-east-1", bucket=s3_bucket, image=IMAGE, instance_type="ml.g5.12xlarge", spot=True,
        max_run_s=3600, tags={"team": "search"},
    )  # fmt: skip
    messages: list[str] = []
    result = sagemaker_launch.launch(cfg, spec, echo=messages.append)
    name = result.job_name
    assert re.fullmatch(r"rag-embed-finetune-\d{14}", name)

    digest = {
        ch: re.search(rf"inputs/{ch}-([0-9a-f]{{12}})/", json.dumps(result.request)).group(1)
        for ch in ("train", "eval", "model")
    }
    prefix = "rag-embed-finetune/inputs"
    s3_uri = lambda ch: f"s3://{s3_bucket}/{prefix}/{ch}-{digest[ch]}/"  # noqa: E731
    channel = lambda ch: {  # noqa: E731
        "ChannelName": ch,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": s3_uri(ch), "S3DataDistributionType": "FullyReplicated"}
        },
        "InputMode": "File",
    }
    metric = lambda n: {"Name": n, "Regex": f"METRIC {n}={NUMBER}"}  # noqa: E731
    assert result.request == {
        "TrainingJobName": name,
        "HyperParameters": {
            "check_column_order": "false",
            "data": "pairs.jsonl",
            "epochs": "2.0",
            "learning_rate": "5e-05",
            "matryoshka_dims": "32,16",
            "nproc": "4",  # ml.g5.12xlarge has 4 x A10G: the container trains under torchrun, 4 processes
            "query_prompt": "query: ",
        },
        "AlgorithmSpecification": {
            "TrainingInputMode": "File",
            "TrainingImage": IMAGE,
            "MetricDefinitions": [metric("train_loss")]
            + [metric(f"{kind}_ndcg@10_dim{d}") for kind in ("test", "baseline", "val") for d in (32, 16)],
        },
        "RoleArn": ROLE,
        "InputDataConfig": [channel("eval"), channel("model"), channel("train")],
        "OutputDataConfig": {"S3OutputPath": f"s3://{s3_bucket}/rag-embed-finetune/output/", "CompressionType": "GZIP"},
        "ResourceConfig": {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
        "Tags": [{"Key": "team", "Value": "search"}],
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {
            "S3Uri": f"s3://{s3_bucket}/rag-embed-finetune/rag-embed-finetune/{name}/checkpoints",
            "LocalPath": "/opt/ml/checkpoints",
        },
    }
    # The inputs really are in S3 (SeaweedFS), where the channels point.
    assert _keys(aws, s3_bucket, f"{prefix}/train-") == [f"{prefix}/train-{digest['train']}/pairs.jsonl"]
    assert f"{prefix}/model-{digest['model']}/modules.json" in _keys(aws, s3_bucket, f"{prefix}/model-")
    assert _keys(aws, s3_bucket, f"{prefix}/eval-") == [
        f"{prefix}/eval-{digest['eval']}/{p}" for p in ("corpus.jsonl", "qrels/test.tsv", "queries.jsonl")
    ]
    # moto (the stand-in) holds the job as sent.
    desc = sagemaker_jobs.describe(name, "us-east-1")
    assert desc["HyperParameters"] == result.request["HyperParameters"]
    assert desc["RoleArn"] == ROLE and desc["EnableManagedSpotTraining"] is True

    # The same data again is not uploaded again.
    again = sagemaker_launch.launch(cfg, spec, echo=messages.append)
    assert again.request["InputDataConfig"] == result.request["InputDataConfig"]
    assert sum("same content), not uploading again" in m for m in messages) == 3

    # --dry-run prints the same request (but for the timestamp in the name), through the CLI.
    code = launch_cli.main([
        "sagemaker", "--role", ROLE, "--region", "us-east-1", "--bucket", s3_bucket, "--image", IMAGE,
        "--instance-type", "ml.g5.12xlarge", "--spot", "--max-run", "1h", "--tag", "team=search",
        "--data", str(pairs_file), "--model", str(tiny_model_path), "--eval-data", str(tmp_path / "beir"),
        "--epochs", "2", "--learning-rate", "5e-5", "--matryoshka-dims", "32,16", "--no-check-column-order",
        "--query-prompt", "query: ", "--s3-uri", "s3://elsewhere/x", "--dry-run",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = json.loads(out)
    dry_name = printed["TrainingJobName"]
    assert json.loads(json.dumps(result.request).replace(name, dry_name)) == printed
    assert "not sent to the job: s3_uri" in err
    assert f"would upload {pairs_file} -> {s3_uri('train')}" in err


def test_dry_run_calls_no_endpoint_and_uploads_nothing(monkeypatch, tmp_path, pairs_file, capsys, sdk_config_file):
    """Every AWS endpoint points at a closed port and no credentials exist: a dry run still prints the request."""
    dead = f"http://127.0.0.1:{_free_port()}"
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "SAGEMAKER_VALIDATE_ROLE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("SAGEMAKER_ROLE", ROLE)
    monkeypatch.setenv("SAGEMAKER_BUCKET", "no-such-bucket")
    code = launch_cli.main(
        [
            "sagemaker",
            "--region",
            "eu-west-1",
            "--image",
            "huggingface",
            "--data",
            str(pairs_file),
            "--epochs",
            "1",
            "--dry-run",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    request = json.loads(out)
    # The Hugging Face training image plus our code: the SDK's driver runs our container entrypoint.
    assert request["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/huggingface-pytorch-training:2.9.0-transformers5.3.0-gpu-py312-cu130-ubuntu22.04"
    )
    assert request["AlgorithmSpecification"]["ContainerEntrypoint"] == ["/bin/bash"]
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["train", "code", "sm_drivers"]
    assert request["HyperParameters"] == {"data": "pairs.jsonl", "epochs": "1.0"}
    assert "nproc" not in request["HyperParameters"]  # one A10G: no torchrun
    assert "would upload" in err and "/input/code" in err
    assert "SAGEMAKER_VALIDATE_ROLE" not in __import__("os").environ  # restored after the dry run


def test_hugging_face_mode_uploads_our_code_with_its_requirements(aws, s3_bucket, capsys):
    result = sagemaker_launch.launch(
        _cfg(data="embedded", max_steps=2),
        sagemaker_launch.LaunchSpec(role=ROLE, region="us-east-1", bucket=s3_bucket, image="huggingface"),
        echo=lambda m: None,
    )
    code = next(c for c in result.request["InputDataConfig"] if c["ChannelName"] == "code")["DataSource"][
        "S3DataSource"
    ]["S3Uri"]
    keys = _keys(aws, s3_bucket, code.split(f"{s3_bucket}/", 1)[1] + "/")
    names = {k.split("/input/code/", 1)[1] for k in keys}
    assert {"requirements.txt", "infra/container/entry.py", "job/cli.py", "job/pipeline.py"} <= names
    assert any(n.startswith("job/data/") and n.endswith(".jsonl") for n in names)  # the embedded dataset
    assert not any("__pycache__" in n for n in names)
    body = (
        aws.client()
        .get_object(Bucket=s3_bucket, Key=next(k for k in keys if k.endswith("requirements.txt")))["Body"]
        .read()
        .decode()
    )
    assert "sentence-transformers>=6.0,<7" in body.splitlines()
    assert result.request["HyperParameters"] == {"data": "embedded", "max_steps": "2"}


# --- the launcher's hyperparameters are what the container reads --------------------------------
def test_hyperparameters_round_trip_through_the_container(tmp_path):
    cfg = _cfg(
        preset="blog", loss="cached_mnrl", learning_rate=3e-5, matryoshka_dims="64,32", check_column_order=False,
        query_prompt="query: ", max_seq_length=256, eval_steps=50, data="embedded",
    )  # fmt: skip
    hps = sagemaker_inputs.hyperparameters_for(cfg, sagemaker_inputs.plan_inputs(cfg, "b", "prefix"))
    assert all(isinstance(v, str) for v in hps.values())
    root = tmp_path / "opt_ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hps))
    inside = container_inputs.resolve_container_config(contract.ContainerPaths.create(root), environ={})
    for name in ("preset", "loss", "learning_rate", "matryoshka_dims", "check_column_order", "query_prompt",
                 "max_seq_length", "eval_steps", "data", "batch_size", "gradient_accumulation_steps",
                 "epochs"):  # fmt: skip
        assert getattr(inside, name) == getattr(cfg, name), name


# --- errors before any upload ------------------------------------------------------------------
def _launch_args(bucket, data, *extra):
    return ["sagemaker", "--bucket", bucket, "--image", IMAGE, "--data", str(data), "--no-wait", *extra]


def test_missing_role_is_refused_before_any_upload(aws, s3_bucket, pairs_file, capsys):
    code = launch_cli.main(_launch_args(s3_bucket, pairs_file, "--region", "us-east-1"))
    _, err = capsys.readouterr()
    assert code == 2
    assert "error: No IAM role is given for the SageMaker job. Fix: pass --role arn:aws:iam::ACCOUNT:role/NAME" in err
    assert _keys(aws, s3_bucket) == []


def test_missing_region_is_refused_before_any_upload(aws, s3_bucket, pairs_file, monkeypatch, capsys):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    code = launch_cli.main(_launch_args(s3_bucket, pairs_file, "--role", ROLE))
    _, err = capsys.readouterr()
    assert code == 2
    assert "No AWS region is set for the SageMaker job. Fix: pass --region" in err
    assert _keys(aws, s3_bucket) == []


def test_a_bad_instance_count_is_named_before_a_missing_role(aws, s3_bucket, pairs_file, monkeypatch, capsys):
    monkeypatch.delenv("SAGEMAKER_ROLE", raising=False)
    code = launch_cli.main(_launch_args(s3_bucket, pairs_file, "--instance-count", "-1"))
    _, err = capsys.readouterr()
    assert code == 2
    assert "--instance-count -1: a training job runs on at least one instance" in err and "IAM role" not in err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--role", "SageMakerExecution"], "is not an IAM role ARN"),
        (["--image", "rag-embed-finetune:latest"], "is not an ECR image URI"),
        (["--instance-count", "0"], "--instance-count 0: a training job runs on at least one instance"),
        (
            ["--instance-type", "ml.g5.12xlarge", "--nproc", "8"],
            "more training processes than ml.g5.12xlarge has GPUs (4)",
        ),
        (
            ["--instance-count", "2", "--instance-type", "ml.g5.12xlarge", "--batch-size", "36"],
            "batch_size 36 does not split evenly over 2 nodes x 4 processes (8)",
        ),
        (
            ["--instance-count", "3", "--instance-type", "ml.g5.2xlarge", "--batch-size", "32"],
            "batch_size 32 does not split evenly over 3 nodes x 1 process (3)",
        ),
        (["--spot", "--max-run", "2h", "--max-wait", "1h"], "shorter than --max-run"),
        (["--max-wait", "1h"], "only applies to spot training"),
        (["--max-run", "soon"], "is not a duration"),
        (["--tag", "team"], "is not KEY=VALUE"),
        (["--eval-data", "/no/such/beir"], "--eval-data /no/such/beir does not exist"),
        (["--data", str(Path(__file__).parents[1] / "README.md")], "Cannot tell the format of"),
    ],
)
def test_bad_launch_settings_are_refused_before_any_upload(aws, s3_bucket, pairs_file, capsys, extra, needle):
    args = _launch_args(s3_bucket, pairs_file, "--role", ROLE, "--region", "us-east-1")
    code = launch_cli.main(args + extra)
    _, err = capsys.readouterr()
    assert code == 2 and needle in err, err
    assert _keys(aws, s3_bucket) == []


def test_several_instances_are_one_job_over_all_of_them(aws, s3_bucket, pairs_file, capsys):
    """--instance-count 2: one CreateTrainingJob with InstanceCount 2 (SageMaker starts a container per
    instance; they train together, see test_multinode.py); nproc is per instance."""
    args = _launch_args(s3_bucket, pairs_file, "--role", ROLE, "--region", "us-east-1", "--instance-count", "2",
                        "--instance-type", "ml.g5.12xlarge", "--batch-size", "64", "--spot", "--dry-run")  # fmt: skip
    code = launch_cli.main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    request = json.loads(out)
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50}
    assert request["HyperParameters"]["nproc"] == "4" and request["HyperParameters"]["batch_size"] == "64"
    assert request["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"  # restored on every instance
    assert (
        "launch: 2 x ml.g5.12xlarge, 4 training process(es) each: torchrun across the instances, global batch 64 "
        "(8 pairs per process), in-batch negatives gathered across all of them"
    ) in err
    # The Hugging Face image takes the same path: the SDK's driver runs our entrypoint on every instance.
    code = launch_cli.main([*args[: args.index("--image") + 1], "huggingface", *args[args.index("--image") + 2 :]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["ResourceConfig"]["InstanceCount"] == 2
    # the cost line counts every instance: BillableTimeInSeconds is per instance
    desc = {"ResourceConfig": {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 2}, "BillableTimeInSeconds": 600}
    assert sagemaker_jobs.job_cost(desc)[0] == pytest.approx(600 * 2 * 7.09 / 3600)


def test_tensorboard_s3_uri_is_the_jobs_tensorboard_output_config(aws, s3_bucket, pairs_file, capsys):
    """--tensorboard-s3-uri sets the SDK v3 ModelTrainer's TensorBoardOutputConfig: SageMaker syncs the container's
    TensorBoard folder (the contract's /opt/ml/output/tensorboard, where the job writes its event files, see
    test_container.py) to the URI while the job runs. moto stands in for SageMaker's control plane: it accepts
    the CreateTrainingJob request and keeps the job, but syncs nothing; what is checked is the request as sent."""
    uri = f"s3://{s3_bucket}/rag-embed-finetune/tensorboard/"
    spec = sagemaker_launch.LaunchSpec(role=ROLE, region="us-east-1", bucket=s3_bucket, image=IMAGE)
    result = sagemaker_launch.launch(
        _cfg(data=str(pairs_file)), dataclasses.replace(spec, tensorboard_s3_uri=uri), echo=lambda m: None
    )
    assert result.request["TensorBoardOutputConfig"] == {"S3OutputPath": uri, "LocalPath": contract.TENSORBOARD}
    assert contract.TENSORBOARD == "/opt/ml/output/tensorboard"
    assert sagemaker_jobs.describe(result.job_name, "us-east-1")["TrainingJobStatus"] == "Completed"  # moto took it
    # Without the flag the job has no TensorBoardOutputConfig (the event files still come back in output.tar.gz).
    plain = sagemaker_launch.launch(_cfg(data=str(pairs_file)), spec, dry_run=True, echo=lambda m: None)
    assert "TensorBoardOutputConfig" not in plain.request

    # The command line's flag reaches the request (a dry run prints it); a URI that is not s3:// is refused first.
    args = _launch_args(s3_bucket, pairs_file, "--role", ROLE, "--region", "us-east-1", "--dry-run")
    assert launch_cli.main([*args, "--tensorboard-s3-uri", uri]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["TensorBoardOutputConfig"] == result.request["TensorBoardOutputConfig"], err
    assert launch_cli.main([*args, "--tensorboard-s3-uri", f"{s3_bucket}/tb"]) == 2
    _, err = capsys.readouterr()
    assert f"'{s3_bucket}/tb' is not an S3 URI" in err


def test_missing_bucket_gets_the_s3_error(aws, pairs_file, capsys):
    code = launch_cli.main(_launch_args("no-such-bucket-x", pairs_file, "--role", ROLE, "--region", "us-east-1"))
    _, err = capsys.readouterr()
    assert code == 2 and "The bucket 'no-such-bucket-x' does not exist" in err


# --- the user's SageMaker configuration ------------------------------------------------------------
USER_CONFIG = """\
SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: false
  TrainingJob:
    RoleArn: arn:aws:iam::123456789012:role/FromConfig
    EnableNetworkIsolation: true
    EnableInterContainerTrafficEncryption: true
    Environment: {TEAM_VAR: from-config, SHARED: config}
    VpcConfig: {SecurityGroupIds: [sg-0123456789abcdef0], Subnets: [subnet-0123456789abcdef0]}
    OutputDataConfig: {KmsKeyId: 'arn:aws:kms:us-east-1:123456789012:key/output'}
    ResourceConfig: {VolumeKmsKeyId: 'arn:aws:kms:us-east-1:123456789012:key/volume'}
    Tags: [{Key: cost-center, Value: '42'}, {Key: team, Value: config}]
"""


def test_the_users_sagemaker_config_survives_with_telemetry_off(aws, s3_bucket, sdk_config_file, monkeypatch):
    """VPC, KMS keys, tags, environment, network isolation and the role of config.yaml reach the request
    (flags win per key); the Session carries the whole configuration plus TelemetryOptOut."""
    sdk_config_file.write_text(USER_CONFIG)
    sessions = []
    real = sagemaker_launch.launch_session
    monkeypatch.setattr(
        sagemaker_launch, "launch_session", lambda *a, **k: sessions.append(real(*a, **k)) or sessions[-1]
    )
    spec = sagemaker_launch.LaunchSpec(
        region="us-east-1", bucket=s3_bucket, image=IMAGE, tags={"team": "search"}, environment={"SHARED": "flag"}
    )
    request = sagemaker_launch.launch(_cfg(data="embedded"), spec, dry_run=True, echo=lambda m: None).request
    assert request["RoleArn"] == "arn:aws:iam::123456789012:role/FromConfig"
    assert request["VpcConfig"] == {
        "SecurityGroupIds": ["sg-0123456789abcdef0"],
        "Subnets": ["subnet-0123456789abcdef0"],
    }
    assert request["EnableNetworkIsolation"] is True and request["EnableInterContainerTrafficEncryption"] is True
    assert request["Environment"] == {"TEAM_VAR": "from-config", "SHARED": "flag"}
    assert request["OutputDataConfig"]["KmsKeyId"] == "arn:aws:kms:us-east-1:123456789012:key/output"
    assert request["ResourceConfig"]["VolumeKmsKeyId"] == "arn:aws:kms:us-east-1:123456789012:key/volume"
    assert request["Tags"] == [{"Key": "cost-center", "Value": "42"}, {"Key": "team", "Value": "search"}]
    config = sessions[0].sagemaker_config
    assert config["SageMaker"]["PythonSDK"]["Modules"]["TelemetryOptOut"] is True  # added, even over false
    assert config["SageMaker"]["TrainingJob"]["VpcConfig"]["Subnets"] == ["subnet-0123456789abcdef0"]


def test_a_broken_sagemaker_config_is_named(aws, s3_bucket, sdk_config_file, capsys):
    sdk_config_file.write_text("SchemaVersion: '1.0'\nSageMaker:\n  TrainingJob:\n    Tags: not-a-list\n")
    code = launch_cli.main(_launch_args(s3_bucket, "embedded", "--role", ROLE, "--region", "us-east-1", "--dry-run"))
    _, err = capsys.readouterr()
    assert code == 2
    assert f"The SageMaker SDK configuration (SAGEMAKER_ADMIN_CONFIG_OVERRIDE={sdk_config_file}" in err
    assert "could not be loaded" in err


# --- waiting: the job's log through the SDK -----------------------------------------------------
def _log_lines_at_create(monkeypatch, lines: list[str]) -> None:
    """Put ``lines`` in CloudWatch Logs (moto) under the job's stream when the job is created, as the
    training container would: /aws/sagemaker/TrainingJobs, stream NAME/algo-1-<epoch>."""
    import boto3

    real = sagemaker_launch.launch_session

    def session(*args, **kwargs):
        s = real(*args, **kwargs)

        def put(params, **_):
            logs = boto3.client("logs", region_name="us-east-1")
            group, stream = "/aws/sagemaker/TrainingJobs", f"{params['TrainingJobName']}/algo-1-1764200000"
            try:
                logs.create_log_group(logGroupName=group)
            except logs.exceptions.ResourceAlreadyExistsException:
                pass
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
            now = int(__import__("time").time() * 1000)
            events = [{"timestamp": now + i, "message": line} for i, line in enumerate(lines)]
            logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)

        s.boto_session.events.register("before-parameter-build.sagemaker.CreateTrainingJob", put)
        return s

    monkeypatch.setattr(sagemaker_launch, "launch_session", session)


def test_wait_streams_the_jobs_log_through_the_sdk(aws, s3_bucket, monkeypatch):
    lines = ["container: run dir /opt/ml/checkpoints/run", "METRIC train_loss=0.5", "container: done in 42 s [ok]"]
    _log_lines_at_create(monkeypatch, lines)
    messages: list[str] = []
    spec = sagemaker_launch.LaunchSpec(role=ROLE, region="us-east-1", bucket=s3_bucket, image=IMAGE)
    name = sagemaker_launch.launch(_cfg(data="embedded"), spec, wait=True, poll_s=0.1, echo=messages.append).job_name
    assert messages == [
        f"launch: started training job {name} in us-east-1; follow it with `job launch status {name}`",
        f"launch: waiting for {name}; its log follows",
        *lines,  # from CloudWatch Logs, through the SDK's TrainingJob.wait(logs=True)
        f"launch: {name}: Completed / Completed",  # moto: completed at once
        f"launch: {name} completed; `job launch fetch {name}` downloads the model and report",
    ]


def test_a_job_that_fails_while_waited_for_is_an_error_with_its_reason(monkeypatch):
    """moto cannot fail a job; the SDK's FailedStatusError and the final description are stood in for here."""
    from sagemaker.core.utils.exceptions import FailedStatusError

    desc = {"TrainingJobName": "j", "TrainingJobStatus": "Failed", "SecondaryStatus": "Failed",
            "FailureReason": "AlgorithmError: The 'train' channel is missing"}  # fmt: skip

    class Job:
        def wait(self, poll, logs):
            raise FailedStatusError(resource_type="TrainingJob", status="Failed", reason=desc["FailureReason"])

    monkeypatch.setattr(sagemaker_jobs, "describe", lambda name, region=None, client=None: desc)
    monkeypatch.setattr("sagemaker.core.resources.TrainingJob.get", lambda **kw: Job())
    messages: list[str] = []
    assert sagemaker_jobs.wait_for("j", "us-east-1", messages.append)["TrainingJobStatus"] == "Failed"
    assert messages[-1] == "launch: j: Failed / Failed"


# --- status and cost ---------------------------------------------------------------------------


def test_status_shows_the_job_from_the_control_plane(aws, s3_bucket, capsys):
    name = sagemaker_launch.launch(
        _cfg(data="embedded"),
        sagemaker_launch.LaunchSpec(role=ROLE, region="us-east-1", bucket=s3_bucket, image=IMAGE),
        echo=lambda m: None,
    ).job_name
    assert launch_cli.main(["status", name, "--region", "us-east-1"]) == 0
    out = capsys.readouterr().out
    assert f"job:       {name}" in out
    assert "status:    Completed / Completed" in out  # moto reports every job completed at once
    assert f"model:     s3://{s3_bucket}/rag-embed-finetune/output/{name}/output/model.tar.gz" in out
    assert launch_cli.main(["status", "no-such-job", "--region", "us-east-1"]) == 2
    assert "There is no training job named no-such-job" in capsys.readouterr().err


def test_status_lines_cost_and_metrics():
    desc = {
        "TrainingJobName": "j", "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
        "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1}, "EnableManagedSpotTraining": True,
        "TrainingTimeInSeconds": 1200, "BillableTimeInSeconds": 400,
        "FinalMetricDataList": [
            {"MetricName": "baseline_ndcg@10_dim384", "Value": 0.6992},
            {"MetricName": "test_ndcg@10_dim32", "Value": 0.6852},
            {"MetricName": "test_ndcg@10_dim384", "Value": 0.8194},
            {"MetricName": "train_loss", "Value": 0.25},
        ],
    }  # fmt: skip
    lines = sagemaker_jobs.status_lines(desc)
    assert "instance:  1 x ml.g5.2xlarge (spot)" in lines
    assert "time:      1200 s training, 400 s billable, spot saved 67%" in lines
    # 400 s x 1 instance x $1.515/h = $0.168 (the on-demand price: an upper bound for spot)
    assert "cost:      $0.17 (400 s x 1 x ml.g5.2xlarge $1.515/h (us-east-1 on-demand list price))" in lines
    i = lines.index("metrics:")
    assert lines[i + 1 : i + 5] == [
        "  test_ndcg@10_dim384 = 0.8194", "  test_ndcg@10_dim32 = 0.6852", "  baseline_ndcg@10_dim384 = 0.6992",
        "  train_loss = 0.2500",
    ]  # fmt: skip
    assert sagemaker_jobs.job_cost(desc, price_per_hour=0.6)[0] == pytest.approx(400 * 0.6 / 3600)


# --- fetch: SageMaker's tarballs -> a run directory ---------------------------------------------
def _sagemaker_tarball(src: Path, dest: Path) -> Path:
    """What SageMaker uploads: the folder's contents at the archive root, gzipped."""
    with tarfile.open(dest, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=p.relative_to(src).as_posix(), recursive=False)
    return dest


def test_fetch_makes_a_run_directory_that_loads(aws, s3_bucket, tmp_path, tiny_model_path, pairs_file, capsys):
    # 1. The container, run for real on the tiny model, as SageMaker would run it.
    root = tmp_path / "opt_ml"
    (root / "input" / "data" / "train").mkdir(parents=True)
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "data" / "train" / "pairs.jsonl").write_bytes(pairs_file.read_bytes())
    (root / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({"model": str(tiny_model_path), "max_steps": "2", "batch_size": "8", "matryoshka_dims": "32,16"})
    )
    assert container.main(["train", "--opt-ml", str(root)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    # 2. A launched job (moto) whose artifacts SageMaker would have uploaded: put them where it says.
    name = sagemaker_launch.launch(
        _cfg(data="embedded"),
        sagemaker_launch.LaunchSpec(role=ROLE, region="us-east-1", bucket=s3_bucket, image=IMAGE),
        echo=lambda m: None,
    ).job_name
    model_uri, output_uri = sagemaker_jobs.output_uris(sagemaker_jobs.describe(name, "us-east-1"))
    for src, uri in ((root / "model", model_uri), (root / "output" / "data", output_uri)):
        bucket, key = uri[len("s3://") :].split("/", 1)
        aws.client().upload_file(str(_sagemaker_tarball(src, tmp_path / Path(key).name)), bucket, key)
    # 3. fetch
    run_dir = tmp_path / "fetched"
    assert launch_cli.main(["fetch", name, "--region", "us-east-1", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"fetch: {name} -> {run_dir} (model/, report/)" in out
    for rel in (
        "model/modules.json",
        "model/training.json",
        "report/metrics.json",
        "ir/test/corpus.jsonl",
        "data/prepare.json",
        "baseline/metrics.json",
    ):
        assert (run_dir / rel).is_file(), rel
    assert json.loads((run_dir / "launch.json").read_text())["training_job"] == name
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(run_dir / "model")).encode(["revenue"]).shape == (1, 32)
    # rag_eval reads it as a run directory: the fine-tuned model, its dims and the test set.
    from rag_eval.sources import resolve_models

    sources = resolve_models(str(run_dir), with_baseline=False)
    assert sources.dims == [32, 16] and sources.models[0].ref == str(run_dir / "model")
    # A second fetch into the same folder needs --force.
    assert launch_cli.main(["fetch", name, "--region", "us-east-1", "--run-dir", str(run_dir)]) == 2
    assert "--force" in capsys.readouterr().err
    assert launch_cli.main(["fetch", name, "--region", "us-east-1", "--run-dir", str(run_dir), "--force"]) == 0
