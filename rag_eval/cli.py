"""Command line: ``rag-eval index|score|query|serve`` (also ``python -m rag_eval``).

A thin layer: it resolves the models, data and store, then calls :mod:`rag_eval.indexing`,
:mod:`rag_eval.scoring`, :mod:`rag_eval.demo` and :mod:`rag_eval.service`. Errors the user can fix are
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
from rag_eval import stores
from rag_eval.naming import check_prefix, dims_in_store
from rag_eval.store_access import (
    HnswSettings,  # Chroma's index parameters (--ef-construction ...); no chromadb import
    StoreTarget,
)
from rag_eval.store_options import store_options, store_target

DEBUG_ENV = "RAG_EVAL_DEBUG"


def echo(msg: str) -> None:
    click.echo(msg)


def _setup_logging(debug: bool) -> None:
    from job.cli_common import setup_logging as job_setup_logging

    job_setup_logging(debug)
    for noisy in ("chromadb", "posthog", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.INFO if debug else logging.WARNING)


def _hold(sources, target: StoreTarget, command: str, *, shared: bool = False):
    """The run directory (or, without one, the embedded or exact store's folder) held for ``command``: exclusively by
    `index` and `score`, which write there, shared by `query` and `serve`, which only read
    (job.layout.run_lock: a second writer, or a writer while a reader serves, is refused with the holder named)."""
    import contextlib

    from job.layout import run_lock

    if sources.run_dir is not None:
        return run_lock(sources.run_dir.root, command, shared=shared)
    if target.path is not None and (not shared or Path(target.path).expanduser().is_dir()):  # a store's folder
        return run_lock(Path(target.path).expanduser(), command, shared=shared)
    return contextlib.nullcontext()


def parse_dims(value: str | None) -> list[int] | None:
    if value is None or not value.strip():
        return None
    try:
        dims = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise JobError(
            f"--dims {value!r} is not a comma-separated list of integers.", "pass e.g. --dims 384,256,128,64,32."
        ) from None
    if not dims or any(d < 1 for d in dims):
        raise JobError(f"--dims {value!r} must list positive integers.", "pass e.g. --dims 384,256,128,64,32.")
    return sorted(set(dims), reverse=True)


# --- shared options ------------------------------------------------------------------------------
# Every command takes the same preamble (`shared_options`): the models, the evaluation data, the store
# and --debug. Dims are always `--dims` (a comma-separated list) and the result count `-k/--k`.
def model_options(func):
    func = click.option(
        "--passage-prompt", default=None, help="Text prepended to every passage. Default: the run's (none)."
    )(func)
    func = click.option(
        "--query-prompt", default=None, help="Text prepended to every question. Default: the run's (none)."
    )(func)
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


def data_options(func):
    func = click.option(
        "--split",
        default="test",
        show_default=True,
        help="Which ir/<split> (run directory) or qrels/<split>.tsv (BEIR) to read.",
    )(func)
    return click.option(
        "--data",
        default=None,
        help="Evaluation data: a run directory, a BEIR folder or a pairs file. Default: the --model run directory.",
    )(func)


def common(func):
    """--debug and logging set-up; the wrapped command does not see ``debug``."""
    func = click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")(func)

    @functools.wraps(func)
    def wrapper(*args, debug=False, **kwargs):
        _setup_logging(debug)
        return func(*args, **kwargs)

    return wrapper


def shared_options(func):
    """The preamble of every command, listed first in its --help: models, data, store, --debug."""
    return model_options(data_options(store_options(common(func))))


def dims_option(help_text: str):
    return click.option("--dims", default=None, metavar="DIMS", help=help_text)


def rescore_option():
    return click.option(
        "--rescore-multiplier", type=int, default=4, show_default=True, metavar="M",
        help="int8/binary: rescore the top M x k quantized candidates with the float question (0: no rescoring).",
    )  # fmt: skip


def k_option(default: int, help_text: str):
    return click.option("-k", "--k", "k", type=int, default=default, show_default=True, help=help_text)


def _sources(model, baseline, no_baseline, query_prompt, passage_prompt, *, with_baseline=True):
    from rag_eval.sources import resolve_models

    return resolve_models(
        model,
        baseline,
        with_baseline=with_baseline and not no_baseline,
        query_prompt=query_prompt,
        passage_prompt=passage_prompt,
    )


def _load(sources):
    from rag_eval.sources import load_models

    models = load_models(sources.models)
    names = ", ".join(f"{m.label} {m.spec.ref} ({m.dim} dims)" for m in models)
    echo(f"models: {names}")
    return models


def _gold(data, split, sources) -> tuple[object | None, dict[str, set[str]]]:
    """The evaluation set (if any) and, per question text, its relevant passage ids. Without --data, a
    run directory's test set is used when it has one; an explicit --data must load."""
    from rag_eval.sources import load_eval_data

    if data is None and sources.run_dir is None:
        return None, {}
    try:
        ir, _ = load_eval_data(data, sources, split)
    except JobError:
        if data is not None:
            raise
        return None, {}
    relevant = ir.relevant_docs()
    return ir, {ir.queries[qid].strip(): set(relevant.get(qid, ())) for qid in ir.queries}


def _check_compare(compare: bool, no_baseline: bool, sources) -> None:
    if not compare:
        return
    if no_baseline:
        raise JobError(
            "--compare and --no-baseline contradict each other: "
            "--compare shows the baseline beside the fine-tuned model.",
            "drop --no-baseline to compare, or drop --compare to see one model.",
        )
    if len(sources.models) < 2:
        raise JobError(
            f"--compare needs two models, a baseline and a fine-tuned one; {sources.models[0].ref} is one model.",
            "pass a job run directory to --model (its base model is the baseline), or add --baseline MODEL.",
        )


# --- commands ------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="rag-embed-finetune", prog_name="rag-eval")
def cli() -> None:
    """Score retrieval through a real Chroma vector store at every Matryoshka dim, and try it out.

    index -> score (Markdown, JSON, PNG), query (terminal) and serve (a page in the browser). --model
    takes a job run directory (its fine-tuned model and its base model, its dims and its test set),
    a model folder or a Hub id.
    """


@cli.command("index")
@shared_options
@dims_option("Comma-separated dims. Default: the run's Matryoshka dims, else derived from the model.")
@click.option(
    "--ef-construction",
    type=int,
    default=HnswSettings.ef_construction,
    show_default=True,
    help="HNSW build-time candidate list size.",
)
@click.option(
    "--ef-search",
    type=int,
    default=HnswSettings.ef_search,
    show_default=True,
    help="HNSW query-time candidate list size.",
)
@click.option(
    "--max-neighbors",
    type=int,
    default=HnswSettings.max_neighbors,
    show_default=True,
    help="HNSW links per node (M).",
)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Encoding batch size.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace a foreign or corrupted collection of the same name; move a damaged store aside and rebuild it.",
)
def index_cmd(model, baseline, no_baseline, query_prompt, passage_prompt, data, split, chroma,
              collection_prefix, dims, ef_construction, ef_search, max_neighbors, batch_size,
              force) -> None:  # fmt: skip
    """Embed the corpus once per model; write one cosine collection per (model, dim)."""
    from job.config import default_dims
    from rag_eval.indexing import index_models
    from rag_eval.sources import load_eval_data

    settings = HnswSettings(ef_construction, ef_search, max_neighbors)
    settings.check()
    check_prefix(collection_prefix)
    wanted = parse_dims(dims)
    target = store_target(chroma, None)  # checks the store options before any model loads
    if stores.index_settings(target.kind) is not HnswSettings:  # the store takes no HNSW parameters
        if settings != HnswSettings():
            raise JobError(
                f"--ef-construction, --ef-search and --max-neighbors set Chroma's HNSW index; --store {target.kind} "
                "has no index parameters.",
                f"drop them, or drop --store {target.kind}.",
            )
        settings = None  # type: ignore[assignment]  # (e.g. the exact store: no index parameters)
    sources = _sources(model, baseline, no_baseline, query_prompt, passage_prompt)
    ir, source = load_eval_data(data, sources, split)
    target = store_target(chroma, sources.run_dir)
    with _hold(sources, target, "rag-eval index"), stores.errors(target):
        vector_store = stores.connect(target, rebuild_damaged=force, echo=echo)
        models = _load(sources)
        dims_ = wanted or sources.dims or default_dims(models[-1].dim)
        done = index_models(
            vector_store, models, ir, source, dims_, settings, prefix=collection_prefix, force=force,
            batch_size=batch_size, progress=True, echo=echo,
        )  # fmt: skip
    echo(
        f"index: {len(done)} collections ({len(models)} models x dims "
        f"{', '.join(map(str, sorted({d.dim for d in done}, reverse=True)))}), "
        f"{len(ir.corpus)} passages each, "
        + (
            f"HNSW ef_construction {ef_construction} / ef_search {ef_search} / max_neighbors {max_neighbors}"
            if settings is not None
            else "exact search"
        )
        + f" -> {stores.describe(target)}"
    )


@cli.command("score")
@shared_options
@dims_option("Comma-separated dims. Default: the run's dims, else every indexed dim.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Report folder. Default: RUN_DIR/rag_eval, else ./rag_eval_report.",
)
@click.option(
    "--latency-samples", type=int, default=200, show_default=True, help="Single queries timed per collection."
)
@click.option(
    "--batch-queries", type=int, default=32, show_default=True, help="Queries per call for the batched latency."
)
@click.option(
    "--disk-size/--no-disk-size", default=True, show_default=True, help="Measure each collection's size on disk."
)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Encoding batch size.")
@click.option(
    "--precision", "precision", default="float32,int8,binary", show_default=True, metavar="LIST",
    help="The frontier's precisions: float32, int8 (ranges from the corpus), binary; 'none' skips the frontier.",
)  # fmt: skip
@rescore_option()
@click.option(
    "--run-file", "run_file", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="DIR",
    help="Also write TREC run files (qid Q0 docid rank score tag), one per model, dim and precision (chroma, "
    "float32 exact, int8, binary...), and the qrels (qid 0 docid grade) into DIR, for trec_eval, ir_measures or ranx.",
)  # fmt: skip
def score_cmd(model, baseline, no_baseline, query_prompt, passage_prompt, data, split, chroma,
              collection_prefix, dims, out, latency_samples, batch_queries, disk_size,
              batch_size, precision, rescore_multiplier, run_file) -> None:  # fmt: skip
    """Query the test questions against every collection; report beside the exact evaluator."""
    from rag_eval import report
    from rag_eval.quantized import check_multiplier, check_precisions
    from rag_eval.scoring import ScoreOptions, check_indexed, score_models
    from rag_eval.sources import load_eval_data

    precisions = () if precision.strip().lower() == "none" else tuple(check_precisions(precision))
    check_multiplier(rescore_multiplier)
    if latency_samples < 1 or batch_queries < 1 or batch_size < 1:
        raise JobError(
            "--latency-samples, --batch-queries and --batch-size must be at least 1.", "pass positive numbers."
        )
    check_prefix(collection_prefix)
    wanted = parse_dims(dims)
    sources = _sources(model, baseline, no_baseline, query_prompt, passage_prompt)
    ir, source = load_eval_data(data, sources, split)
    target = store_target(chroma, sources.run_dir)
    with _hold(sources, target, "rag-eval score"), stores.errors(target):
        vector_store = stores.connect(target, create=False)
        dims_ = wanted or sources.dims or dims_in_store(vector_store, collection_prefix, sources.models[-1].key) or [0]
        check_indexed(vector_store, sources.models, dims_, collection_prefix)
        models = _load(sources)
        opts = ScoreOptions(
            latency_samples=latency_samples, batch_queries=batch_queries, measure_disk=disk_size, batch_size=batch_size,
            precisions=precisions, rescore_multiplier=rescore_multiplier, run_dir=run_file,
        )  # fmt: skip
        result = score_models(vector_store, models, ir, dims_, prefix=collection_prefix, opts=opts, echo=echo)
        out_dir = out or (sources.run_dir.rag_eval if sources.run_dir is not None else Path("rag_eval_report"))
        paths = report.write(out_dir, result, {"data_source": source, "split": split})
    echo("")
    echo(report.ndcg_table(result))
    echo("")
    echo(report.metrics_table(result))
    echo("")
    echo(report.cost_table(result))
    echo("")
    echo(report.agreement_line(result))
    if report.frontier_rows(result):
        echo("")
        echo(report.frontier_table(report.frontier_rows(result)))
        echo("")
        echo(report.recommendations(result))
    echo(f"score: report {paths['markdown']}, metrics {paths['json']}, plot {paths['plot']}")
    if result.get("run_files"):
        n = sum(len(files) for dims_ in result["run_files"]["runs"].values() for files in dims_.values())
        echo(f"score: {n} TREC run files and {result['run_files']['qrels']} -> {run_file}")


@cli.command("query")
@click.argument("question", required=False)
@shared_options
@dims_option("Comma-separated dims whose collections to search, one answer per dim. Default: the largest indexed.")
@click.option("--dim", type=int, default=None, hidden=True, help="Old spelling of --dims with one dim.")
@k_option(5, "How many passages to show.")
@click.option(
    "--compare",
    is_flag=True,
    help="Show the baseline's results beside the fine-tuned model's; mark what the fine-tuned model ranks higher.",
)
@click.option(
    "--interactive",
    "-i",
    is_flag=True,
    help="Read questions from standard input until EOF (also when no QUESTION is given).",
)
def query_cmd(question, model, baseline, no_baseline, query_prompt, passage_prompt, data, split, chroma,
              collection_prefix, dims, dim, k, compare, interactive) -> None:  # fmt: skip
    """The retrieval demo in the terminal: the top-k passages for a question, with scores and ids.

    Passages relevant to a question of the evaluation data (--data, default the run's test set) are
    marked *. For the same demo in a browser, with the models loaded once, see `rag-eval serve`.
    """
    from rag_eval.demo import interactive as ask_until_eof
    from rag_eval.demo import show
    from rag_eval.scoring import check_indexed, open_collection
    from rag_eval.searcher import Searcher

    if k < 1:
        raise JobError(f"-k/--k {k} must be at least 1.", "pass e.g. -k 5.")
    if dim is not None and dims is not None:
        raise JobError("Both --dim and --dims are given.", "pass --dims (one dim or a comma-separated list).")
    check_prefix(collection_prefix)
    wanted = [dim] if dim is not None else parse_dims(dims)
    sources = _sources(model, baseline, no_baseline, query_prompt, passage_prompt, with_baseline=compare)
    _check_compare(compare, no_baseline, sources)
    target = store_target(chroma, sources.run_dir)
    _, gold = _gold(data, split, sources)
    with _hold(sources, target, "rag-eval query", shared=True), stores.errors(target):
        vector_store = stores.connect(target, create=False)
        dims_ = wanted or (dims_in_store(vector_store, collection_prefix, sources.models[-1].key) or [0])[:1]
        check_indexed(vector_store, sources.models, dims_, collection_prefix)
        models = _load(sources)
        per_dim = [
            [Searcher(m, open_collection(vector_store, m, d, collection_prefix), d) for m in models] for d in dims_
        ]

        def answer(q: str) -> None:
            for searchers in per_dim:
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


@cli.command("serve")
@shared_options
@dims_option("Comma-separated dims offered on the page. Default: every indexed dim.")
@k_option(5, "Passages shown per model at first (the page can change it).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="RAG_EVAL_SERVE_HOST",
    help="Address to listen on (0.0.0.0: every interface).",
)
@click.option(
    "--port", type=int, default=7860, show_default=True, envvar="RAG_EVAL_SERVE_PORT", help="TCP port to listen on."
)
@click.option(
    "--threads", type=int, default=0, show_default=True, envvar="RAG_EVAL_SERVE_THREADS",
    help="Threads per model encoder (the models encode in parallel on their own threads). 0: CPU cores / models, "
    "at least 1.",
)  # fmt: skip
@click.option(
    "--backend", type=click.Choice(["auto", "torch", "onnx", "onnx-int8"]), default="auto", show_default=True,
    envvar="RAG_EVAL_SERVE_BACKEND",
    help="What encodes the questions: PyTorch, or the models' ONNX exports (`job export`). auto: the fastest export "
    "within the run's --export-max-drop that both models have, else torch. The index stays the one `rag-eval index` "
    "built.",
)  # fmt: skip
@click.option(
    "--precision", type=click.Choice(["float32", "int8", "binary"]), default="float32", show_default=True,
    help="float32: Chroma's HNSW index. int8/binary: the stored vectors as codes in memory, exact search.",
)  # fmt: skip
@rescore_option()
def serve_cmd(model, baseline, no_baseline, query_prompt, passage_prompt, data, split, chroma,
              collection_prefix, dims, k, host, port, threads, backend, precision,
              rescore_multiplier) -> None:  # fmt: skip
    """The retrieval demo in a browser: base and fine-tuned side by side, models loaded once.

    A Gradio page (fully offline) at http://HOST:PORT/, and a JSON endpoint /api/search?q=...&k=5&dim=128
    for scripts and load tests. Optional basic auth: RAG_EVAL_SERVE_AUTH=user:password in the
    environment (never on the command line). Stop it with Ctrl+C (or SIGTERM).
    """
    from rag_eval import web
    from rag_eval.quantized import check_multiplier
    from rag_eval.service import MAX_K, RetrievalService, set_torch_threads
    from rag_eval.sources import choose_backend, load_models

    check_multiplier(rescore_multiplier)
    auth = web.auth_from_env()
    web.check_installed()
    web.check_port_free(host, port)
    if k < 1 or k > MAX_K:
        raise JobError(f"-k/--k {k} is out of range.", f"pass a number from 1 to {MAX_K}.")
    if threads < 0:
        raise JobError(f"--threads {threads} is negative.", "pass 0 (automatic) or a positive number.")
    check_prefix(collection_prefix)
    wanted = parse_dims(dims)
    sources = _sources(model, baseline, no_baseline, query_prompt, passage_prompt)
    target = store_target(chroma, sources.run_dir)
    ir, _ = _gold(data, split, sources)
    per_model = set_torch_threads(threads, len(sources.models))
    chosen, why = choose_backend(sources, backend)

    def load(sources_):
        models = load_models(sources_.models, backend=chosen, threads=per_model)
        echo("models: " + ", ".join(f"{m.label} {m.spec.ref} ({m.dim} dims)" for m in models) + f" on {chosen} ({why})")
        return models

    with _hold(sources, target, "rag-eval serve", shared=True):
        with stores.errors(target):
            service = RetrievalService.open(
                sources, target, ir, wanted, prefix=collection_prefix, k=k, load=load, echo=echo, backend=chosen,
                backend_note=why, precision=precision, rescore_multiplier=rescore_multiplier,
            )  # fmt: skip
        web.run(service, host=host, port=port, auth=auth, echo=echo)


# --- entry point ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the command line; the same contract as ``job.cli.main``."""
    from job.cli_common import run_cli

    return run_cli(cli, argv, "rag-eval", "a collection being written is left as it was before", DEBUG_ENV)


def entrypoint() -> None:
    sys.exit(main())
