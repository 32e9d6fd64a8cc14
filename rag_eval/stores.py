"""The vector stores rag_eval can use, by name (``--store``): the one place callers get a store from.

Each entry names the module that implements :mod:`rag_eval.index`'s two classes and provides
``connect(target, *, create, rebuild_damaged, echo)`` and ``errors(target)`` (a context manager that turns the
store's failures while connecting into JobErrors naming it and the fix); and, where it has them, ``options`` (a
decorator adding its command-line options to every `rag-eval` command), ``make_target(values, run_dir)`` (the
:class:`~rag_eval.store_access.StoreTarget` those options name; without one: the folder RUN_DIR/<name>),
``describe_target(target)`` (the phrase messages name it by), ``HELP`` (its words in ``--store``'s help) and
``INDEX_SETTINGS`` (the class of the index parameters `rag-eval index` sets: Chroma's HNSW settings). Modules are
imported when first used, and a store's client library only when that store is picked. A new store is one module
and one line here (tests/rag_eval/test_store_registry.py adds one).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from types import ModuleType

from rag_eval.index import VectorStore
from rag_eval.store_access import StoreTarget

STORES: dict[str, str] = {
    "chroma": "rag_eval.store",  # embedded, a server, or Chroma Cloud; HNSW search
    "exact": "rag_eval.exact_store",  # a folder of saved vectors; brute-force search (float32, int8, binary)
}
DEFAULT_STORE = "chroma"


def module(kind: str) -> ModuleType:
    if kind not in STORES:
        from job.errors import JobError

        raise JobError(f"There is no store named {kind!r}.", f"pass --store {' or '.join(STORES)}.")
    return importlib.import_module(STORES[kind])


def connect(
    target: StoreTarget, *, create: bool = True, rebuild_damaged: bool = False, echo: Callable[[str], None] = print
) -> VectorStore:
    """The store ``target`` names (``create=False``: one that must already exist)."""
    return module(target.kind).connect(target, create=create, rebuild_damaged=rebuild_damaged, echo=echo)


def describe(target: StoreTarget) -> str:
    """The phrase messages name the store by ('embedded Chroma store runs/x/chroma', 'exact store ...')."""
    named = getattr(module(target.kind), "describe_target", None)
    return named(target) if named is not None else f"{target.kind} store {target.path}"


def index_settings(kind: str) -> type | None:
    """The class of the index parameters the store takes (None: it takes none)."""
    return getattr(module(kind), "INDEX_SETTINGS", None)


@contextlib.contextmanager
def errors(target: StoreTarget) -> Iterator[None]:
    """The store's failures (at any step: connecting, a lost server, a full disk) as JobErrors naming it."""
    with module(target.kind).errors(target):
        yield
