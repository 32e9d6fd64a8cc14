"""The store options every `rag-eval` command takes, and the target they name.

`--store NAME` picks a store of :data:`rag_eval.stores.STORES` (default chroma), `--collection-prefix` names its
indexes, and each store adds its own options (its module's ``options``: Chroma's in :mod:`rag_eval.chroma_options`,
the exact store's `--store-path` and `--exact-precision` in :mod:`rag_eval.exact_store`). The store's module turns
the values into a :class:`~rag_eval.store_access.StoreTarget` (its ``make_target``; a store without one gets the
folder RUN_DIR/<name>); an option of a store other than the one picked is refused, naming it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from job.errors import JobError
from rag_eval import stores
from rag_eval.naming import DEFAULT_PREFIX
from rag_eval.store_access import StoreTarget
from rag_eval.stores import DEFAULT_STORE, STORES


def store_params() -> dict[str, list[click.Parameter]]:
    """Each registered store's own options, as click parameters (read off its module's ``options``)."""

    def none() -> None: ...

    found = {}
    for kind in STORES:
        add = getattr(stores.module(kind), "options", None)
        found[kind] = list(getattr(add(none), "__click_params__", [])) if add else []
        none.__dict__.pop("__click_params__", None)
    return found


def store_keys() -> list[str]:
    """The values the store options hand the command (``--store`` and every store's own)."""
    return ["store", *(p.name for params in store_params().values() for p in params if p.name)]


def store_options(func):
    """`--store`, every store's options and `--collection-prefix`; the command receives the store's values as
    one ``chroma`` dict (see :func:`store_target`)."""

    command, keys = func, store_keys()

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        return command(*args, chroma={k: kwargs.pop(k) for k in keys}, **kwargs)

    func = wrapper
    func = click.option(
        "--collection-prefix", default=DEFAULT_PREFIX, show_default=True, envvar="RAG_EVAL_COLLECTION_PREFIX",
        help="Collections are named PREFIX-<model>-<hash>-d<dim>.",
    )(func)  # fmt: skip
    for kind in STORES:
        add = getattr(stores.module(kind), "options", None)
        func = add(func) if add else func
    func = click.option(
        "--store", default=DEFAULT_STORE, show_default=True, envvar="RAG_EVAL_STORE", metavar="NAME",
        help=f"The vector store: {' or '.join(STORES)}. "
        + " ".join(f"{k}: {getattr(stores.module(k), 'HELP', 'see its module')}." for k in STORES),
    )(func)  # fmt: skip
    return func


def _given(value: Any, param: click.Parameter) -> bool:
    return value not in (None, (), False) and value != param.default


def store_target(chroma: dict[str, Any], run_dir) -> StoreTarget:
    """The store the options name, built by its module's ``make_target`` (without one: the folder RUN_DIR/<name>, or
    ./<name>). A JobError for an unknown store, or options of another store."""
    kind = chroma.get("store") or DEFAULT_STORE
    module = stores.module(kind)
    for other, params in store_params().items():
        given = [p.opts[0] for p in params if other != kind and p.name and _given(chroma.get(p.name), p)]
        if given:
            raise JobError(
                f"{', '.join(given)} apply to --store {other}, but the store is {kind}.",
                f"add --store {other}, or drop them.",
            )
    make = getattr(module, "make_target", None)
    if make is not None:
        return make(chroma, run_dir)
    return StoreTarget(path=(run_dir.root if run_dir is not None else Path(".")) / kind, kind=kind)
