"""A store added the way a contributor adds one: this module, and one line in rag_eval.stores.STORES (which
tests/rag_eval/test_store_registry.py adds). Each index is one JSON file (ids, vectors, texts, metadata) in a
folder, written through a temporary name and renamed, searched by brute-force cosine. It has one option of its
own (`--json-folder`), and names itself in messages through ``describe_target``. No chromadb, no rag_eval.store.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from job.errors import JobError
from rag_eval.index import Hit, VectorIndex, VectorStore, WriteResult, ranked
from rag_eval.store_access import StoreTarget


def options(func):
    return click.option(
        "--json-folder", type=click.Path(path_type=Path), default=None, help="--store json: its folder."
    )(func)


def make_target(values: dict[str, Any], run_dir) -> StoreTarget:
    folder = values.get("json_folder") or (run_dir.root / "json_store" if run_dir is not None else Path("json_store"))
    return StoreTarget(path=Path(folder), kind="json")


def describe_target(target: StoreTarget) -> str:
    return f"JSON store {target.path}"


class JsonIndex(VectorIndex):
    def __init__(self, path: Path):
        self.path, self.name = path, path.stem
        data = json.loads(path.read_text())
        self.ids, self.texts, self._meta = data["ids"], data["texts"], data["metadata"]
        self.vectors = np.asarray(data["vectors"], dtype=np.float32).reshape(len(self.ids), -1)

    def count(self) -> int:
        return len(self.ids)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._meta

    def query(self, vectors: np.ndarray, n: int, *, documents: bool = False) -> list[list[Hit]]:
        scores = np.asarray(vectors, dtype=np.float32) @ self.vectors.T
        return [
            ranked((self.ids[i], row[i], self.texts[i] if documents else "") for i in range(len(self.ids)))[:n]
            for row in scores
        ]

    def fetch(self, ids: Iterable[str]) -> dict[str, str]:
        where = {cid: i for i, cid in enumerate(self.ids)}
        return {cid: self.texts[where[cid]] or "" for cid in ids if cid in where}

    def fetch_all(self) -> tuple[list[str], np.ndarray, list[str | None]]:
        return list(self.ids), self.vectors, list(self.texts)


class JsonStore(VectorStore):
    kind, label = "json", "JSON store"

    def __init__(self, root: Path):
        self.root = root

    def describe(self) -> str:
        return f"JSON store {self.root}"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json"))

    def open(self, name: str) -> JsonIndex | None:
        path = self.root / f"{name}.json"
        return JsonIndex(path) if path.is_file() else None

    def write(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        documents: Sequence[str] | None,
        metadata: dict[str, Any],
        settings: Any,
        *,
        force: bool = False,
        progress: Callable[[int], None] | None = None,
        batch_size: int | None = None,
    ) -> WriteResult:
        start = time.perf_counter()
        old, note, kept = self.existing(name, metadata, force, start)
        if kept is not None:
            return kept
        texts = list(documents) if documents is not None else [None] * len(ids)
        vectors = np.asarray(vectors, dtype=np.float32)
        payload = {"ids": list(ids), "vectors": vectors.ravel().tolist(), "texts": texts, "metadata": metadata}
        tmp = self.root / f".{name}.tmp"
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self.root / f"{name}.json")
        if progress is not None:
            progress(len(ids))
        action = "replaced" if old is not None else "created"
        return WriteResult(name, action, note, time.perf_counter() - start, written=len(ids))

    def delete(self, name: str) -> None:
        (self.root / f"{name}.json").unlink(missing_ok=True)


def connect(target: StoreTarget, *, create: bool = True, rebuild_damaged: bool = False, echo=print) -> JsonStore:
    root = Path(target.path)
    if not root.is_dir():
        if not create:
            raise JobError(f"There is no JSON store at {root}.", "run `rag-eval index --store json` first.")
        root.mkdir(parents=True)
    return JsonStore(root)


def errors(target: StoreTarget):
    import contextlib

    return contextlib.nullcontext()
