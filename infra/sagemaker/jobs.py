"""Following a SageMaker training job up: describe, wait (with its logs), cost, and fetch its result
into a run directory.

:func:`wait_for` is the SDK's own ``TrainingJob.wait(logs=True)``: it streams the job's CloudWatch
log lines while it waits; each line comes through ``echo``.
:func:`fetch` unpacks model.tar.gz and output.tar.gz into a run directory (the layout of ``job run``:
model/, report/, ir/, data/, baseline/), which ``job evaluate`` and rag_eval read;
:func:`unpack_result` does the unpacking, for ``job launch local`` too."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from infra.publish import s3
from infra.sagemaker.sdk import env_vars, resolve_region, sagemaker_client
from job.errors import JobError

Echo = Callable[[str], None]


# On-demand list prices, USD per instance-hour, SageMaker training, us-east-1 (check
# https://aws.amazon.com/sagemaker/pricing/ for yours; spot is billed lower). --price overrides.
ON_DEMAND_USD_PER_HOUR = {
    "ml.g5.xlarge": 1.408,
    "ml.g5.2xlarge": 1.515,
    "ml.g5.4xlarge": 2.03,
    "ml.g5.8xlarge": 3.06,
    "ml.g5.12xlarge": 7.09,
    "ml.g5.24xlarge": 10.18,
    "ml.g5.48xlarge": 20.36,
}


def describe(name: str, region: str | None = None, client=None) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or sagemaker_client(region)
    try:
        return client.describe_training_job(TrainingJobName=name)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        # AWS answers "Requested resource not found."; moto "Could not find training job ..."
        if code in ("ValidationException", "ResourceNotFound") and re.search(
            r"not found|could not find|does not exist", message, re.I
        ):
            raise JobError(
                f"There is no training job named {name} in {client.meta.region_name}.", "check the name and --region."
            ) from None
        raise JobError(
            f"DescribeTrainingJob {name} failed: {code} {message}".strip(), "check the credentials and --region."
        ) from None
    except BotoCoreError as exc:
        raise JobError(
            f"Could not reach SageMaker to describe {name}: {exc}.", "check the network, credentials and --region."
        ) from None


# The SDK's TrainingJob.wait(logs=True) logs each CloudWatch event through this logger, as
# "<log stream>:\n<line>" with extra={"markup": False}; its other records are its progress chatter.
SDK_JOB_LOGGER = "sagemaker.core.resources"


class _LogLines(logging.Handler):
    """Hands the job's log lines from the SDK's logger to ``echo``, without the stream name."""

    def __init__(self, echo: Echo) -> None:
        super().__init__(logging.INFO)
        self.echo = echo
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "markup", None) is not False:
            return
        _stream, sep, line = record.getMessage().partition(":\n")
        self.echo(line if sep else record.getMessage())
        self.lines += 1


@contextlib.contextmanager
def _job_log_lines(echo: Echo) -> Iterator[_LogLines]:
    log = logging.getLogger(SDK_JOB_LOGGER)
    handler = _LogLines(echo)
    old = (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the lines go to echo only, the SDK's status chatter nowhere
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(old[0])
        log.propagate = old[1]


def wait_for(name: str, region: str | None, echo: Echo, poll_s: float = 10, logs: bool = True) -> dict[str, Any]:
    """Wait until the job ends, streaming its CloudWatch log lines to ``echo`` (the SDK's
    ``TrainingJob.wait(logs=True)``); returns the final DescribeTrainingJob response."""
    import boto3
    from sagemaker.core.resources import TrainingJob
    from sagemaker.core.utils.exceptions import FailedStatusError

    region = resolve_region(region)
    describe(name, region)  # a clear error for a job that does not exist
    job = TrainingJob.get(training_job_name=name, session=boto3.session.Session(region_name=region))
    echo(f"launch: waiting for {name}" + ("; its log follows" if logs else ""))
    # The SDK reads the logs with a CloudWatch client of its own, made from boto3's default session:
    # it gets the job's region from the environment.
    with env_vars(AWS_DEFAULT_REGION=region), _job_log_lines(echo), _quiet_console():
        try:
            job.wait(poll=max(1, int(poll_s)), logs=logs)
        except FailedStatusError:
            pass  # reported below, with the job's FailureReason
    desc = describe(name, region)
    echo(f"launch: {name}: {desc['TrainingJobStatus']} / {desc.get('SecondaryStatus')}")
    return desc


@contextlib.contextmanager
def _quiet_console() -> Iterator[None]:
    """The SDK's wait draws a live status panel on the terminal (rich); our lines say the same."""
    try:
        from rich import get_console
    except ImportError:  # pragma: no cover - the SDK depends on rich
        yield
        return
    console = get_console()
    old = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = old


def job_cost(desc: dict[str, Any], price_per_hour: float | None = None) -> tuple[float | None, str]:
    """(USD, how it was computed): billable seconds x instances x the on-demand hourly price."""
    rc = desc.get("ResourceConfig", {})
    itype, count = rc.get("InstanceType"), rc.get("InstanceCount", 1)
    seconds = desc.get("BillableTimeInSeconds")
    price = price_per_hour if price_per_hour is not None else ON_DEMAND_USD_PER_HOUR.get(itype)
    if seconds is None:
        return None, "no billable time yet"
    if price is None:
        return None, f"{seconds} billable s; no price known for {itype} (pass --price USD_PER_HOUR)"
    usd = seconds * count * price / 3600
    basis = "--price" if price_per_hour is not None else "us-east-1 on-demand list price"
    return usd, f"{seconds} s x {count} x {itype} ${price:.3f}/h ({basis})"


def status_lines(desc: dict[str, Any], price_per_hour: float | None = None) -> list[str]:
    rc = desc.get("ResourceConfig", {})
    lines = [
        f"job:       {desc['TrainingJobName']}",
        f"status:    {desc['TrainingJobStatus']} / {desc.get('SecondaryStatus', '-')}",
        f"instance:  {rc.get('InstanceCount', 1)} x {rc.get('InstanceType', '?')}"
        + (" (spot)" if desc.get("EnableManagedSpotTraining") else ""),
    ]
    if desc.get("FailureReason"):
        lines.append(f"failure:   {desc['FailureReason']}")
    train_s, bill_s = desc.get("TrainingTimeInSeconds"), desc.get("BillableTimeInSeconds")
    if train_s is not None:
        saved = (
            f", spot saved {1 - bill_s / train_s:.0%}"
            if desc.get("EnableManagedSpotTraining") and bill_s and train_s
            else ""
        )
        lines.append(f"time:      {train_s} s training, {bill_s} s billable{saved}")
    usd, basis = job_cost(desc, price_per_hour)
    lines.append(f"cost:      {f'${usd:.2f}' if usd is not None else 'unknown'} ({basis})")
    metrics = {m["MetricName"]: m["Value"] for m in desc.get("FinalMetricDataList", [])}
    if metrics:
        lines.append("metrics:")
        lines += [f"  {k} = {v:.4f}" for k, v in sorted(metrics.items(), key=lambda kv: _metric_order(kv[0]))]
    artifacts = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if artifacts:
        lines.append(f"model:     {artifacts}")
    return lines


def _metric_order(name: str) -> tuple:
    m = re.match(r"(\w+)_ndcg@10_dim(\d+)$", name)
    kinds = {"test": 0, "baseline": 1, "val": 2}
    return (kinds.get(m.group(1), 3), -int(m.group(2))) if m else (9, 0, name)


def status(
    name: str, region: str | None = None, echo: Echo = print, price_per_hour: float | None = None, client=None
) -> dict[str, Any]:
    desc = describe(name, region, client)
    for line in status_lines(desc, price_per_hour):
        echo(line)
    return desc


def output_uris(desc: dict[str, Any]) -> tuple[str, str]:
    """(model.tar.gz, output.tar.gz) S3 URIs of a job."""
    name = desc["TrainingJobName"]
    model = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    base = desc["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return model or f"{base}/{name}/output/model.tar.gz", f"{base}/{name}/output/output.tar.gz"


def _extract(tarball: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tarball) as tf:
            tf.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise JobError(
            f"{tarball.name} could not be unpacked: {exc}.", "download it again; check that the job completed."
        ) from None


def check_run_dir(run_dir: Path, force: bool) -> None:
    """Refuse a non-empty run directory unless ``force`` (then it is replaced when the result is in)."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())) and not force:
        raise JobError(
            f"{run_dir} already exists and is not empty.", "pass --force to replace it, or another --run-dir."
        )


def unpack_result(
    model_tgz: Path,
    output_tgz: Path | None,
    run_dir: Path,
    record: dict[str, Any],
    *,
    output_root: str = "",
    source: str | None = None,
    no_model_fix: str = (
        "check that the job used this project's image (its log says why it stopped), then run it again."
    ),
) -> Path:
    """A training job's model.tar.gz and output.tar.gz as a run directory (model/, report/, ir/, data/,
    baseline/, and ``launch.json`` holding ``record``); a run directory already there is replaced.

    ``output_root``: the folder of output.tar.gz that holds the run's output data (SageMaker uploads
    /opt/ml/output/data at the archive root; the SDK's local mode archives /opt/ml/output, so ``data``).
    A model without modules.json (an empty model.tar.gz) is an error: the job produced no model."""
    with tempfile.TemporaryDirectory(prefix="job-unpack-", dir=_existing_parent(run_dir)) as tmp:
        stage = Path(tmp) / "run"
        _extract(model_tgz, stage / "model")
        if not (stage / "model" / "modules.json").is_file():
            raise JobError(
                f"{source or model_tgz} holds no sentence-transformers model (no modules.json): "
                "the job wrote no model.",
                no_model_fix,
            )
        if output_tgz is not None:
            out = Path(tmp) / "output"
            _extract(output_tgz, out)
            data = out / output_root if output_root else out
            if data.is_dir():
                for item in data.iterdir():
                    shutil.move(str(item), str(stage / item.name))
        (stage / "launch.json").write_text(json.dumps(record, indent=2))
        if run_dir.exists():
            shutil.rmtree(run_dir) if run_dir.is_dir() else run_dir.unlink()
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), str(run_dir))
    return run_dir


def _existing_parent(path: Path) -> Path:
    """A folder on the run directory's file system (the staged run is moved, not copied, into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def result_lines(name: str, run_dir: Path, base_model_copy: Path | None = None) -> list[str]:
    """What a fetched (or locally run) job's run directory holds, and how to use it; ``base_model_copy``:
    where the base model that went in through the model channel is on this machine, if known."""
    report = run_dir / "report" / "report.md"
    lines = [
        f"{name} -> {run_dir} (model/{', report/' if report.is_file() else ''}); "
        f"load it with SentenceTransformer('{run_dir / 'model'}')"
    ]
    training = run_dir / "model" / "training.json"
    base = json.loads(training.read_text()).get("base_model", "") if training.is_file() else ""
    if base.startswith(("/opt/ml/", tempfile.gettempdir())):
        copy = f" (--baseline {base_model_copy})" if base_model_copy else ""
        lines.append(
            f"the base model came in through the job's model channel ({base}); "
            f"give its local copy to rag_eval as --baseline{copy}"
        )
    return lines


def fetch(
    name: str,
    run_dir: Path | None = None,
    region: str | None = None,
    *,
    force: bool = False,
    echo: Echo = print,
    client=None,
    s3_client=None,
) -> Path:
    """Download model.tar.gz and output.tar.gz of a completed job and unpack them into a run directory."""
    desc = describe(name, region, client)
    if desc["TrainingJobStatus"] != "Completed":
        raise JobError(
            f"Training job {name} is {desc['TrainingJobStatus']}; only a completed job has a model to fetch.",
            f"wait for it (`job launch status {name}`)"
            + (f"; it failed: {desc['FailureReason']}" if desc.get("FailureReason") else "."),
        )
    run_dir = Path(run_dir or Path("runs") / name)
    check_run_dir(run_dir, force)
    model_uri, output_uri = output_uris(desc)
    s3_client = s3_client or s3.s3_client()
    with tempfile.TemporaryDirectory(prefix="job-fetch-") as tmp:
        (model_tgz,) = s3.download_prefix(model_uri, Path(tmp) / "model", s3_client)
        try:
            (output_tgz,) = s3.download_prefix(output_uri, Path(tmp) / "output", s3_client)
        except JobError:
            output_tgz = None
            echo(f"fetch: no {output_uri}; the run directory gets the model only")
        record = {"training_job": name, "model": model_uri, "output": output_uri}
        unpack_result(model_tgz, output_tgz, run_dir, record, source=model_uri)
    for line in result_lines(name, run_dir):
        echo(f"fetch: {line}")
    return run_dir
