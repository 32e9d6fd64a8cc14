"""Tokenize every distinct training text once, then only pad per batch.

sentence-transformers' collator runs the model's full ``preprocess`` (modality checks, the
tokenizer, padding) on every batch of every epoch. Training texts repeat across epochs (and
passages repeat across pairs), so :class:`TokenCache` tokenizes each distinct text once, in large
chunks, through the very same ``preprocess`` function, keeps the unpadded ids, and builds each
batch by padding cached rows. The tensors are identical to what ``preprocess`` returns for that
batch (a test checks this); inputs it cannot reproduce exactly (non-text inputs, extra keys such as
``prompt_length``) fall back to the original function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

_KEYS = {"input_ids", "attention_mask", "token_type_ids"}


class TokenCache:
    def __init__(self, preprocess_fn: Callable, tokenizer, chunk_size: int = 1024) -> None:
        self.fn = preprocess_fn
        self.chunk_size = chunk_size
        self.padding_side = getattr(tokenizer, "padding_side", "right")
        self.pad_values = {
            "input_ids": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            "attention_mask": 0,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0,
        }
        self._rows: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, str | int]]] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self.disabled = False
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(text: str, prompt: str | None, task: str | None, kwargs: dict[str, Any]) -> tuple:
        return (text, prompt, task, tuple(sorted(kwargs.items())))

    def warm(self, texts: Iterable[str], prompt: str | None = None, task: str | None = None, **kwargs) -> None:
        """Tokenize the distinct ``texts`` in large chunks (much faster than batch by batch)."""
        todo = [t for t in dict.fromkeys(texts) if self._key(t, prompt, task, kwargs) not in self._rows]
        # Chunks of similar length pad little: the tokenizer pads each chunk to its longest text.
        todo.sort(key=len)
        for start in range(0, len(todo), self.chunk_size):
            if self.disabled:
                return
            self._fill_around_failures(todo[start : start + self.chunk_size], prompt, task, kwargs)

    def _fill_around_failures(self, texts: list[str], prompt, task, kwargs) -> None:
        """Fill ``texts``; a text that cannot be tokenized is left out (halving the chunk to find it),
        so the training batch that holds it raises and names its pair."""
        try:
            self._fill(texts, prompt, task, kwargs)
        except Exception:  # noqa: BLE001
            if len(texts) > 1 and not self.disabled:
                middle = len(texts) // 2
                self._fill_around_failures(texts[:middle], prompt, task, kwargs)
                self._fill_around_failures(texts[middle:], prompt, task, kwargs)

    def _fill(self, texts: list[str], prompt, task, kwargs) -> None:
        out = self.fn(texts, prompt=prompt, task=task, **kwargs)
        tensors = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)} if isinstance(out, Mapping) else {}
        # Batch-level scalars such as {"modality": "text", "prompt_length": 3} depend only on the
        # prompt (part of the cache key) and are kept; anything else cannot be rebuilt by padding
        # alone, and then the original function is always used.
        labels = {k: v for k, v in out.items() if k not in tensors} if isinstance(out, Mapping) else {}
        if (
            not tensors
            or set(tensors) - _KEYS
            or "attention_mask" not in tensors
            or not all(isinstance(v, (str, int)) for v in labels.values())
        ):
            self.disabled = True
            return
        mask = tensors["attention_mask"].bool()
        for key, value in tensors.items():
            self._dtypes[key] = value.dtype
        for i, text in enumerate(texts):
            row = {k: v[i][mask[i]].to(torch.int32) for k, v in tensors.items()}
            self._rows[self._key(text, prompt, task, kwargs)] = (row, labels)

    def __call__(self, inputs, prompt: str | None = None, task: str | None = None, **kwargs) -> dict[str, Any]:
        if self.disabled or not inputs or not all(isinstance(x, str) for x in inputs):
            return self.fn(inputs, prompt=prompt, task=task, **kwargs)
        keys = [self._key(t, prompt, task, kwargs) for t in inputs]
        missing = [t for t, k in zip(inputs, keys) if k not in self._rows]
        self.misses += len(missing)
        self.hits += len(inputs) - len(missing)
        if missing:
            self._fill(list(dict.fromkeys(missing)), prompt, task, kwargs)
            if self.disabled:
                return self(inputs, prompt=prompt, task=task, **kwargs)
        rows = [self._rows[k][0] for k in keys]
        labels = self._rows[keys[0]][1]
        if any(self._rows[k][1] != labels for k in keys):
            return self.fn(inputs, prompt=prompt, task=task, **kwargs)
        batch = {
            name: pad_sequence(
                [r[name] for r in rows],
                batch_first=True,
                padding_value=self.pad_values[name],
                padding_side=self.padding_side,
            ).to(self._dtypes[name])
            for name in rows[0]
        }
        return {**batch, **labels}


def cached_trainer_class():
    """A SentenceTransformerTrainer whose collator tokenizes through a :class:`TokenCache`."""
    from sentence_transformers import SentenceTransformerTrainer

    class CachedTokenizationTrainer(SentenceTransformerTrainer):
        def get_data_collator(self, model, args, processing_class=None):
            collator = super().get_data_collator(model=model, args=args, processing_class=processing_class)
            collator.preprocess_fn = TokenCache(collator.preprocess_fn, model.tokenizer)
            return collator

        def warm_token_cache(self, dataset) -> None:
            """Tokenize every column of ``dataset`` once, with the prompt each column is trained with."""
            cache: TokenCache = self.data_collator.preprocess_fn  # type: ignore[assignment]  # (set just above)
            prompts: Any = self.args.prompts  # str, {column: prompt}, or None (the job never uses per-dataset ones)
            for column in dataset.column_names:
                prompt = prompts if isinstance(prompts, str) else (prompts or {}).get(column)
                max_length = getattr(self.data_collator, "max_length", None)
                extra: dict[str, Any] = {"max_length": max_length} if isinstance(max_length, int) else {}
                cache.warm(dataset[column], prompt=prompt, **extra)

    return CachedTokenizationTrainer
