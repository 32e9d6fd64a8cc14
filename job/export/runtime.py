"""Encoding with an exported model (ONNX, run by ONNX Runtime): the same vectors path as sentence-transformers.

sentence-transformers runs ONNX files through Optimum (``SentenceTransformer(path, backend="onnx",
model_kwargs={"file_name": "onnx/model_qint8.onnx"})``), and that is how users load the exports
elsewhere. Optimum's ONNX Runtime package (optimum-onnx 0.1.0) requires transformers < 4.58, so it cannot be
installed beside this project's transformers 5; :class:`ExportedModel` is the small part of that path the job needs:
the model's own fast tokenizer (``tokenizer.json``, truncated at its ``max_seq_length``), one ONNX Runtime session,
whose graph pools and normalises (``sentence_embedding``; for older graphs and models without a Normalize module, the
saved pooling and normalisation here, :func:`job.export.portable.read_pipeline`). It answers the calls that the
evaluator, the vector store code and ``rag-eval serve`` make on a SentenceTransformer (``encode``, ``encode_query``,
``encode_document``, ``similarity``, ``max_seq_length``). The tests check it against sentence-transformers' own ONNX
backend in a venv where Optimum installs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from job.errors import JobError
from job.export.portable import read_pipeline


class _NoCard:
    """The evaluator records its metrics on the model's card; an exported model has none to update."""

    def set_evaluation_metrics(self, *args, **kwargs) -> None:
        pass


def _pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    maskf = mask[..., None].astype(np.float32)
    if mode == "mean":
        return (hidden * maskf).sum(1) / np.maximum(maskf.sum(1), 1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.where(maskf > 0, hidden, -1e9).max(1)
    if mode == "mean_sqrt_len_tokens":
        return (hidden * maskf).sum(1) / np.sqrt(np.maximum(maskf.sum(1), 1e-9))
    if mode == "lasttoken":
        last = mask.sum(1) - 1
        return hidden[np.arange(hidden.shape[0]), last]
    raise JobError(f"Pooling mode {mode!r} is not supported for exported models.", "serve this model with torch.")


class ExportedModel:
    """One exported file of a saved sentence-transformers model, encoding like the model does. ``file_name`` is
    relative to ``folder`` (or absolute: a file being checked before it is moved into place)."""

    similarity_fn_name = "cosine"

    def __init__(
        self, folder: str | Path, file_name: str, *, threads: int | None = None, name: str = "", spin: bool = True
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.file_name = file_name
        self.name = name or file_name
        self.pipeline = read_pipeline(self.folder)
        if self.pipeline.dense:
            raise JobError(
                f"{self.folder} has a Dense layer after pooling, which the exported graph does not hold.",
                "serve this model with --backend torch.",
            )
        self.max_seq_length = self.pipeline.max_seq_length or 512
        self.prompts = dict(self.pipeline.prompts)
        self.model_card_data = _NoCard()
        self.probe: dict[str, Any] | None = None  # the probe check on this machine (job.export.onnx.open_export)
        tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        tokenizer.enable_truncation(self.max_seq_length)
        pad_id = tokenizer.padding["pad_id"] if tokenizer.padding else (tokenizer.token_to_id("[PAD]") or 0)
        pad_token = tokenizer.padding["pad_token"] if tokenizer.padding else "[PAD]"
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self._tokenizer = tokenizer
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default (one per core)
        options.inter_op_num_threads = 1
        if not spin:  # a server's encoders share the cores with each other and the event loop: no busy-waiting
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = self.folder / file_name
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file: named with the fix
            raise damaged(path, exc) from None
        self._inputs = {i.name for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        # graphs made since issue #33 pool and normalise inside (``sentence_embedding``); a model without a Normalize
        # module, and older graphs, are pooled here from ``last_hidden_state``
        self.pooled_in_graph = "sentence_embedding" in outputs and self.pipeline.normalize
        self._output = "sentence_embedding" if self.pooled_in_graph else (
            "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
        )  # fmt: skip

    # -- the calls the evaluator and rag_eval make --------------------------------------------------------------
    def get_sentence_embedding_dimension(self) -> int:
        return int(self.pipeline.dim or self._run(["dimension"]).shape[1])

    get_embedding_dimension = get_sentence_embedding_dimension

    def similarity(self, a, b):
        from sentence_transformers.util import cos_sim

        return cos_sim(a, b)

    def tokenize_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(self._prepare(texts))]

    def _prepare(self, texts: list[str]) -> list[str]:
        return [t.lower() for t in texts] if self.pipeline.do_lower_case else list(texts)

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(self._prepare(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.asarray([e.type_ids for e in encodings], dtype=np.int64)
        out = self._session.run([self._output], feed)[0]
        if self.pooled_in_graph:
            return out.astype(np.float32)
        pooled = _pool(out, mask, self.pipeline.pooling)
        if self.pipeline.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)

    def encode(
        self,
        sentences,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        **_: Any,
    ):
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if prompt is None and prompt_name is not None:
            prompt = self.prompts.get(prompt_name)
        if prompt:
            if not self.pipeline.include_prompt:
                raise JobError(
                    f"{self.folder} pools without its prompt tokens, which an exported model cannot do.",
                    "serve or score this model with the torch backend.",
                )
            texts = [prompt + t for t in texts]
        # longest first, as sentence-transformers does: batches of similar length pad little
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.get_sentence_embedding_dimension()), dtype=np.float32)
        for start in range(0, len(texts), max(1, batch_size)):
            chunk = order[start : start + batch_size]
            out[chunk] = self._run([texts[i] for i in chunk])
        if truncate_dim:
            out = out[:, :truncate_dim]
        if normalize_embeddings:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        if convert_to_tensor:
            import torch

            result = torch.from_numpy(out)
            return result[0] if single else result
        return out[0] if single else out

    def encode_query(self, sentences, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        if prompt is None and prompt_name is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, sentences, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        if prompt is None and prompt_name is None and "document" in self.prompts:
            prompt_name = "document"
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)


def damaged(path: Path, exc: Exception | None = None) -> JobError:
    """The error for an export that cannot be read: which file, and how to make it again."""
    first = f" ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})" if exc else ""
    model_dir = path.parent.parent if path.parent.name in ("onnx", "openvino") else path.parent
    return JobError(
        f"The exported model {path} is damaged or unreadable{first}.",
        f"make it again with {export_command(model_dir)[:-1]} --force` (the PyTorch model is untouched).",
    )


def export_command(folder: Path, name: str | None = None) -> str:
    """The command that (re)makes the exports of ``folder``: a run's model, a run's base model, or any folder."""
    folder = Path(folder)
    which = f" --export {name}" if name else ""
    if (folder / "training.json").is_file():
        return f"`job export --run-dir {folder.parent}{which}`"
    if folder.parent.name == "baseline" and (folder.parent.parent / "data" / "prepare.json").is_file():
        return f"`job export --run-dir {folder.parent.parent}{which}`"
    return f"`job export --model-dir {folder}{which}`"


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)
