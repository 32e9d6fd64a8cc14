"""The shape of the code base: who may import whom, and no import circle.

``job`` is the bottom layer: it imports neither ``infra`` nor ``rag_eval`` (``infra``'s ``launch`` and ``push``
join the `job` program through entry points, :mod:`job.plugins`); ``infra`` and ``rag_eval`` build on it and use
the shared command-line pieces in ``job.cli_common``, never ``job.cli`` itself. Imports inside functions count
too: a lazy import is still a dependency. Each extension point is a registry that callers go through.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("job", "infra", "rag_eval")
JOB_ENTRY = {"job.cli", "job.__main__"}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (``from a import b`` counts ``a.b`` when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def test_the_graph_is_read():
    graph = import_graph()
    assert "job.pipeline" in graph["job.cli"] and "job.config" in graph["job.pipeline"]
    assert "infra.container.contract" in graph["infra.container.entry"]


def test_job_never_imports_infra_or_rag_eval():
    bad = {
        (mod, dep)
        for mod, deps in import_graph().items()
        if mod.startswith("job")
        for dep in deps
        if dep.split(".")[0] in ("infra", "rag_eval")
    }
    assert not bad, f"job's core imports the layers above it: {sorted(bad)}"


def test_infra_and_rag_eval_never_import_the_job_command_line():
    bad = {
        (mod, dep)
        for mod, deps in import_graph().items()
        if not mod.startswith("job")
        for dep in deps
        if dep in JOB_ENTRY
    }
    assert not bad, f"use job.cli_common instead of the job's command line: {sorted(bad)}"


def test_no_import_circle():
    graph = import_graph()
    cycles = []

    def visit(node, path, on_path, done):
        on_path.add(node)
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep in on_path:
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in done:
                visit(dep, path, on_path, done)
        path.pop()
        on_path.discard(node)
        done.add(node)

    done: set[str] = set()
    for node in sorted(graph):
        if node not in done:
            visit(node, [], set(), done)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_infra_modules_stay_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "infra").rglob("*.py")}
    assert max(sizes.values()) <= 420, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_rag_eval_modules_stay_small():
    """The serve split: the service, the batching, the page and the web layer each in their own module."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "rag_eval").glob("*.py")}
    assert max(sizes.values()) <= 600, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    assert not (ROOT / "rag_eval" / "serve.py").exists()


def test_infra_is_grouped_by_concern():
    """infra/ shows the architecture: the container contract, the SageMaker launcher, publishing."""
    flat = sorted(p.name for p in (ROOT / "infra").glob("*.py") if p.name != "__init__.py")
    assert not flat, f"infra/ modules belong in a folder by concern (container, sagemaker, publish): {flat}"
    folders = sorted(p.name for p in (ROOT / "infra").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == ["container", "publish", "sagemaker"]
    graph = import_graph()
    # the container is what runs inside the image: it never imports the launcher
    assert not {d for m, deps in graph.items() if m.startswith("infra.container") for d in deps
                if d.startswith("infra.sagemaker")}  # fmt: skip


def _third_party_imports(module: str) -> set[str]:
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_chroma_module_talks_to_chroma():
    """One vector-index interface (rag_eval.index): indexing, scoring, the demo and serve go through it, so a
    second store is one new module."""
    users = sorted(m for m in import_graph() if m.startswith("rag_eval") and "chromadb" in _third_party_imports(m))
    assert users == ["rag_eval.store", "rag_eval.store_faults"], users  # the Chroma implementation
    graph = import_graph()
    for module in ("rag_eval.indexing", "rag_eval.scoring", "rag_eval.demo", "rag_eval.service"):
        assert "rag_eval.index" in graph[module], module
    from rag_eval.index import VectorIndex, VectorStore
    from rag_eval.store import ChromaIndex, ChromaStore

    assert issubclass(ChromaStore, VectorStore) and issubclass(ChromaIndex, VectorIndex)
    assert not ChromaStore.__abstractmethods__ and not ChromaIndex.__abstractmethods__


def test_publishing_loops_over_destinations():
    """`job push` and `job run --s3-uri/--hub-repo` publish through one interface (infra.publish.destinations)."""
    graph = import_graph()
    assert graph["infra.publish.cli"] & {"infra.publish.destinations"}
    assert not graph["infra.publish.cli"] & {"infra.publish.s3_publish", "infra.publish.hub"}
    from infra.publish.destinations import Destination, HubDestination, S3Destination, destinations

    kinds = [type(d) for d in destinations(s3_uri="s3://b/p", hub_repo="org/model")]
    assert set(kinds) == {S3Destination, HubDestination}
    for kind in kinds:
        assert all(callable(getattr(kind, name, None)) for name in ("check", "publish")), Destination


JOB_FOLDERS = ["data", "evaluate", "export", "synth", "train"]
# the run itself, at the top of job/: its configuration, directory, steps, pipeline, command line and what they share
JOB_TOP = {"__init__", "__main__", "cli", "cli_common", "config", "errors", "layout", "models", "pipeline", "plugins",
           "progress", "redact", "steps", "storage"}  # fmt: skip


def test_job_is_grouped_by_concern():
    """job/ is laid out like infra/: the run itself at the top, each concern in its folder, each folder's docstring
    naming what it holds."""
    folders = sorted(p.name for p in (ROOT / "job").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == JOB_FOLDERS
    flat = {p.stem for p in (ROOT / "job").glob("*.py")}
    assert flat <= JOB_TOP, f"job/ modules belong in a folder by concern ({', '.join(JOB_FOLDERS)}): {flat - JOB_TOP}"
    for folder in JOB_FOLDERS:
        doc = ast.get_docstring(ast.parse((ROOT / "job" / folder / "__init__.py").read_text())) or ""
        unnamed = [p.stem for p in (ROOT / "job" / folder).glob("*.py")
                   if p.stem != "__init__" and f"job.{folder}.{p.stem}" not in doc]  # fmt: skip
        assert not unnamed, f"job/{folder}/__init__.py's docstring does not say what these hold: {unnamed}"


def test_no_module_shares_a_name_with_a_folder():
    clashes = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
               if p.with_suffix("").is_dir()]  # fmt: skip
    assert not clashes, clashes


def test_only_the_registry_names_the_store_modules():
    """A store is reached through rag_eval.stores (``--store NAME``): no module imports an implementation."""
    from rag_eval.stores import STORES

    graph = import_graph()
    importers = {impl: sorted(m for m, deps in graph.items() if impl in deps) for impl in STORES.values()}
    assert importers == {impl: [] for impl in STORES.values()}, importers
    named = [m for m, p in ((_module_name(p), p) for p in (ROOT / "rag_eval").rglob("*.py"))
             if m != "rag_eval.stores" and any(f'"{impl}"' in p.read_text() for impl in STORES.values())]  # fmt: skip
    assert not named, f"only rag_eval/stores.py names the store modules: {named}"


def test_no_caller_compares_a_store_s_name():
    """What differs between stores is a method, an attribute or an entry point of the store's module (search_name,
    disk_note, INDEX_SETTINGS, describe_target...), never ``kind == "chroma"`` in a caller: only the stores' own
    modules (and the registry) compare store names."""
    from rag_eval.stores import STORES

    own = {"stores.py", "store.py", "exact_store.py", "chroma_options.py", "store_access.py", "store_faults.py"}
    compared = []
    for path in sorted((ROOT / "rag_eval").rglob("*.py")):
        if path.name in own:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = {p.value for p in (node.left, *node.comparators) if isinstance(p, ast.Constant)}
                if constants & set(STORES):
                    compared.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not compared, f"a store's difference belongs in its module (rag_eval/stores.py says how): {compared}"


def test_only_the_destination_modules_talk_to_s3_and_the_hub():
    """boto3 for publishing lives in the S3 destination's modules (the SageMaker launcher is AWS too), the Hub's
    client in its destination's module; job and rag_eval touch neither (the model card's classes aside)."""
    graph = import_graph()
    users: dict[str, list[str]] = {"boto3": [], "botocore": [], "huggingface_hub": []}
    for module in sorted(graph):
        for lib in users.keys() & _third_party_imports(module):
            users[lib].append(module)
    aws = {"infra.publish.s3", "infra.publish.s3_publish"}
    sagemaker = {m for m in graph if m.startswith("infra.sagemaker")}
    assert set(users["boto3"]) | set(users["botocore"]) <= aws | sagemaker, users
    assert set(users["huggingface_hub"]) <= {"infra.publish.hub", "job.evaluate.card", "job.cli_common"}, users
    assert not graph["infra.publish.cli"] & (aws | {"infra.publish.hub", "infra.publish.folder"})


def test_every_registry_refuses_an_unknown_name():
    """No registry lookup falls through to a default: an unknown loss, store or step is a JobError naming the
    choices, and a loss name is compared nowhere but in its registry."""
    import pytest

    from job import steps
    from job.errors import JobError
    from job.train import losses
    from rag_eval import stores

    for lookup in (losses.get, stores.module, steps.get):
        with pytest.raises(JobError):
            lookup("no-such-entry")
    names = set(losses.REGISTRY)
    compared = []
    for path in (ROOT / "job").rglob("*.py"):
        if path.name == "losses.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                parts = [node.left, *node.comparators]
                parts += [e for p in parts if isinstance(p, (ast.Tuple, ast.List, ast.Set)) for e in p.elts]
                if {p.value for p in parts if isinstance(p, ast.Constant)} & names:
                    compared.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not compared, f"a loss's behaviour belongs in its registry entry (job/train/losses.py): {compared}"


def test_publishing_options_are_declared_once():
    """`job push` offers the configuration's publishing fields themselves (same flags, help, JOB_* variables as
    `job run`), and each option that names a destination is a publishing field."""
    from infra.publish.cli import push
    from infra.publish.destinations import DESTINATIONS
    from job import config

    params = {p.name: p for p in push.params}
    assert set(config.PUBLISH_FIELDS) <= set(params)
    for name in config.PUBLISH_FIELDS:
        assert params[name].help.startswith(config.FIELDS[name].metadata["help"]), name
    # each destination is named by a field of its own, and each field that names one names a destination
    assert sorted(d.option for d in DESTINATIONS) == sorted(config.DESTINATION_FIELDS)
    assert {r for d in DESTINATIONS for r in d.reads} <= set(config.PUBLISH_FIELDS)
    source = (ROOT / "infra" / "publish" / "cli.py").read_text()
    twice = [flag for flag in ('"--s3-uri"', '"--hub-repo"', '"--publish-dir"', '"JOB_HUB_REPO"') if flag in source]
    assert not twice, f"declared twice (infra/publish/cli.py and job/config.py): {twice}"
