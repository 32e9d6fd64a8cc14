"""Command line: ``rag-eval index|score|query`` (also ``python -m rag_eval``).

A thin layer: it resolves the models, data and store, then calls :mod:`rag_eval.indexing`,
:mod:`rag_eval.scoring` and :mod:`rag_eval.demo`. Errors the user can fix are
:class:`job.errors.JobError`: one ``error: ...`` paragraph, exit code 2, no traceback unless
``--debug`` (or ``RAG_EVAL_DEBUG=1``), as in the job's command line.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from job.errors import JobError
from rag_eval import store as S

DEBUG_ENV = "RAG_EVAL_DEBUG"


def echo(msg: str) -> None:
    click.echo(msg)


def _setup_logging(debug: bool) -> None:
    from job.cli_common import setup_logging as job_setup_logging

    job_setup_logging(debug)
    for noisy in ("chromadb", "posthog", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.INFO if debug else logging.WARNING)


def parse_dims(value: str | None) -> list[int] | None:
    if value is None or not value.strip():
        return None
    try:
        dims = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise JobError(f"--dims {value!r} is not a comma-separated list of integers.", "pass e.g. --dims 384,256,128,64,32.") from None
    if not dims or any(d < 1 for d in dims):
        raise JobError(f"--dims {value!r} must list positive integers.", "pass e.g. --dims 384,256,128,64,32.")
    return sorted(set(dims), reverse=True)


# --- shared options ------------------------------------------------------------------------------
def model_options(func):
    func = click.option("--passage-prompt", default=None, help="Text prepended to every passage. Default: the run's (none).")(func)
    func = click.option("--query-prompt", default=None, help="Text prepended to every question. Default: the run's (none).")(func)
    func = click.option("--no-baseline", is_flag=True, help="With a run directory: leave out its base model.")(func)
    func = click.option(
        "--baseline", default=None, metavar="MODEL",
        help="Baseline model (folder or Hub id). Default with a run directory: its training.json base_model.",
    )(func)  # fmt: skip
    func = click.option(
        "--model", "-m", required=True, metavar="MODEL", envvar="RAG_EVAL_MODEL",
        help="A job run directory (its fine-tuned model and its base model), a model folder, or a Hub id.",
    )(func)  # fmt: skip
    return func


def store_options(func):
    func = click.option(
        "--collection-prefix", default=S.DEFAULT_PREFIX, show_default=True, envvar="RAG_EVAL_COLLECTION_PREFIX",
        help="Collections are named PREFIX-<model>-<hash>-d<dim>.",
    )(func)  # fmt: skip
    func = click.option("--chroma-port", type=int, default=None, envvar="RAG_EVAL_CHROMA_PORT", help="Chroma server port (default 8000 with --chroma-host).")(func)
    func = click.option("--chroma-host", default=None, envvar="RAG_EVAL_CHROMA_HOST", help="Use the Chroma server on this host (HttpClient) instead of an embedded store.")(func)
    func = click.option(
        "--chroma-path", type=click.Path(path_type=Path), default=None, envvar="RAG_EVAL_CHROMA_PATH",
        help="Embedded persistent Chroma store. Default: RUN_DIR/chroma with a run directory, else ./chroma.",
    )(func)  # fmt: skip
    return func


def common(func):
    """--debug, logging, and JobErrors for a lost Chroma server; passes ``debug`` on."""
    func = click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")(func)

    @functools.wraps(func)
    def wrapper(*args, debug=False, **kwargs):
        _setup_logging(debug)
        return func(*args, **kwargs)

    return wrapper


def store_target(chroma_path: Path | None, chroma_host: str | None, chroma_port: int | None, run_dir) -> S.StoreTarget:
    if chroma_host is None and chroma_port is not None:
        chroma_host = "localhost"
    if chroma_host is not None:
        if chroma_path is not None:
            raise JobError("Both --chroma-path and --chroma-host are given.", "pass --chroma-path for an embedded store or --chroma-host/--chroma-port for a server, not both.")
        port = chroma_port if chroma_port is not None else 8000
        if not 0 < port < 65536:
            raise JobError(f"--chroma-port {port} is not a TCP port.", "pass a port between 1 and 65535.")
        return S.StoreTarget(host=chroma_host, port=port)
    if chroma_path is None:
        chroma_path = (run_dir.root / "chroma") if run_dir is not None else Path("chroma")
    return S.StoreTarget(path=Path(chroma_path).expanduser())


def _sources(model, baseline, no_baseline, query_prompt, passage_prompt, *, with_baseline=True):
    from rag_eval.sources import resolve_models

    return resolve_models(
        model, baseline, with_baseline=with_baseline and not no_baseline, query_prompt=query_prompt, passage_prompt=passage_prompt
    )


def _load(sources):
    from rag_eval.sources import load_models

    models = load_models(sources.models)
    names = ", ".join(f"{m.label} {m.spec.ref} ({m.dim} dims)" for m in models)
    echo(f"models: {names}")
    return models


# --- commands ------------------------------------------------------------------------------------
def data_options(func):
    """--data and --split, shared by index and score."""
    func = click.option("--split", default="test", show_default=True, help="Which ir/<split> (run directory) or qrels/<split>.tsv (BEIR) to read.")(func)
    return click.option("--data", default=None, help="Evaluation data: a run directory, a BEIR folder or a pairs file. Default: the --model run directory.")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="rag-embed-finetune", prog_name="rag-eval")
def cli() -> None:
    """Score retrieval through a real Chroma vector store at every Matryoshka dim, and try it out.

    index -> score (Markdown, JSON, PNG) and query. --model takes a job run directory (its
    fine-tuned model and its base model, its dims and its test set), a model folder or a Hub id.
    """


@cli.command("index")
@model_options
@data_options
@click.option("--dims", default=None, help="Comma-separated dims. Default: the run's Matryoshka dims, else derived from the model.")
@store_options
@click.option("--ef-construction", type=int, default=S.HnswSettings.ef_construction, show_default=True, help="HNSW build-time candidate list size.")
@click.option("--ef-search", type=int, default=S.HnswSettings.ef_search, show_default=True, help="HNSW query-time candidate list size.")
@click.option("--max-neighbors", type=int, default=S.HnswSettings.max_neighbors, show_default=True, help="HNSW links per node (M).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Encoding batch size.")
@click.option("--force", is_flag=True, help="Replace a foreign or corrupted collection of the same name.")
@common
def index_cmd(model, baseline, no_baseline, query_prompt, passage_prompt, data, split, dims, chroma_path, chroma_host,
              chroma_port, collection_prefix, ef_construction, ef_search, max_neighbors, batch_size, force) -> None:  # fmt: skip
    """Embed the corpus once per model; write one cosine collection per (model, dim)."""
    from job.config import default_dims
    from rag_eval.indexing import index_models
    from rag_eval.sources import load_eval_data

    settings = S.HnswSettings(ef_construction, ef_search, max_neighbors)
    settings.check()
    S.check_prefix(collection_prefix)
    wanted = parse_dims(dims)
    sources = _sources(model, baseline, no_baseline, query_prompt, passage_prompt)
    ir, source = load_eval_data(data, sources, split)
    target = store_target(chroma_path, chroma_host, chroma_port, sources.run_dir)
    with S.server_errors(target):
        client = S.connect(target)
        models = _load(sources)
        dims_ = wanted or sources.dims or default_dims(models[-1].dim)
        done = index_models(
            client, models, ir, source, dims_, settings, prefix=collection_prefix, force=force,
            batch_size=batch_size, progress=True, echo=echo,
        )  # fmt: skip
    echo(
        f"index: {len(done)} collections ({len(models)} models x dims {', '.join(map(str, sorted({d.dim for d in done}, reverse=True)))}), "
        f"{len(ir.corpus)} passages each, HNSW ef_construction {ef_construction} / ef_search {ef_search} / "
        f"max_neighbors {max_neighbors} -> {target.describe()}"
    )


@cli.command("score")
@model_options
@data_options
@click.option("--dims", default=None, help="Comma-separated dims. Default: the run's dims, else every indexed dim.")
@store_options
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Report folder. Default: RUN_DIR/rag_eval, else ./rag_eval_report.")
@click.option("--latency-samples", type=int, default=200, show_default=True, help="Single queries timed per collection.")
@click.option("--batch-queries", type=int, default=32, show_default=True, help="Queries per call for the batched latency.")
@click.option("--disk-size/--no-disk-size", default=True, show_default=True, help="Measure each collection's size on disk.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Encoding batch size.")
@common
def score_cmd(model, baseline, no_baseline, query_prompt, passage_prompt, data, split, dims, chroma_path, chroma_host,
              chroma_port, collection_prefix, out, latency_samples, batch_queries, disk_size, batch_size) -> None:  # fmt: skip
    """Query the test questions against every collection; report beside the exact evaluator."""
    from rag_eval import report
    from rag_eval.scoring import ScoreOptions, check_indexed, score_models
    from rag_eval.sources import load_eval_data

    if latency_samples < 1 or batch_queries < 1 or batch_size < 1:
        raise JobError("--latency-samples, --batch-queries and --batch-size must be at least 1.", "pass positive numbers.")
    S.check_prefix(collection_prefix)
    wanted = parse_dims(dims)
    sources = _sources(model, baseline, no_baseline, query_prompt, passage_prompt)
    ir, source = load_eval_data(data, sources, split)
    target = store_target(chroma_path, chroma_host, chroma_port, sources.run_dir)
    with S.server_errors(target):
        client = S.connect(target, create=False)
        dims_ = wanted or sources.dims or S.dims_in_store(client, collection_prefix, sources.models[-1].key) or [0]
        check_indexed(client, target, sources.models, dims_, collection_prefix)
        models = _load(sources)
        opts = ScoreOptions(latency_samples=latency_samples, batch_queries=batch_queries, measure_disk=disk_size, batch_size=batch_size)
        result = score_models(client, target, models, ir, dims_, prefix=collection_prefix, opts=opts, echo=echo)
    out_dir = out or ((sources.run_dir.root / "rag_eval") if sources.run_dir is not None else Path("rag_eval_report"))
    paths = report.write(out_dir, result, {"data_source": source, "split": split})
    echo("")
    echo(report.ndcg_table(result))
    echo("")
    echo(report.metrics_table(result))
    echo("")
    echo(report.cost_table(result))
    echo("")
    echo(report.agreement_line(result))
    echo(f"score: report {paths['markdown']}, metrics {paths['json']}, plot {paths['plot']}")


@cli.command("query")
@click.argument("question", required=False)
@model_options
@click.option("--dim", type=int, default=None, help="Which dim's collection to search. Default: the largest indexed.")
@click.option("--k", "k", type=int, default=5, show_default=True, help="How many passages to show.")
@click.option("--compare", is_flag=True, help="Show the baseline's results beside the fine-tuned model's; mark what the fine-tuned model ranks higher.")
@click.option("--interactive", "-i", is_flag=True, help="Read questions from standard input until EOF (also when no QUESTION is given).")
@click.option("--data", default=None, help="Evaluation data used to mark relevant passages (*) of known questions. Default: the run directory's.")
@click.option("--split", default="test", show_default=True, help="Split of --data whose relevance marks are shown.")
@store_options
@common
def query_cmd(question, model, baseline, no_baseline, query_prompt, passage_prompt, dim, k, compare, interactive, data,
              split, chroma_path, chroma_host, chroma_port, collection_prefix) -> None:  # fmt: skip
    """The retrieval demo: the top-k passages for a question, with scores and ids."""
    from rag_eval.demo import Searcher, interactive as ask_until_eof, show
    from rag_eval.scoring import check_indexed, open_collection
    from rag_eval.sources import load_eval_data

    if k < 1:
        raise JobError(f"--k {k} must be at least 1.", "pass e.g. --k 5.")
    S.check_prefix(collection_prefix)
    sources = _sources(model, baseline, no_baseline, query_prompt, passage_prompt, with_baseline=compare)
    if compare and len(sources.models) < 2:
        raise JobError(
            "--compare needs two models, a baseline and a fine-tuned one.",
            "pass a run directory to --model (its base model is the baseline), or add --baseline MODEL.",
        )
    target = store_target(chroma_path, chroma_host, chroma_port, sources.run_dir)
    gold: dict[str, set[str]] = {}
    if data is not None or sources.run_dir is not None:
        try:
            ir, _ = load_eval_data(data, sources, split)
            by_text = {text: qid for qid, text in ir.queries.items()}
            gold = {text: set(ir.relevant_docs().get(qid, ())) for text, qid in by_text.items()}
        except JobError:
            if data is not None:
                raise
    with S.server_errors(target):
        client = S.connect(target, create=False)
        if dim is None:
            dim = (S.dims_in_store(client, collection_prefix, sources.models[-1].key) or [0])[0]
        check_indexed(client, target, sources.models, [dim], collection_prefix)
        models = _load(sources)
        searchers = [Searcher(m, open_collection(client, target, m, dim, collection_prefix), dim) for m in models]

        def answer(q: str) -> None:
            show(q, searchers, k, relevant=gold.get(q.strip(), ()), echo=echo)
            echo("")

        if question and not interactive:
            answer(question)
            return
        if question:
            answer(question)
        tty = sys.stdin.isatty()
        n = ask_until_eof(sys.stdin, answer, (lambda: click.echo("question> ", nl=False)) if tty else None)
        if tty:
            echo("")
        echo(f"query: answered {n} question{'s' if n != 1 else ''}")


# --- entry point ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the command line; the same contract as ``job.cli.main``."""
    from job.cli_common import run_cli

    return run_cli(cli, argv, "rag-eval", "a collection being written is left as it was before", DEBUG_ENV)


def entrypoint() -> None:
    sys.exit(main())
