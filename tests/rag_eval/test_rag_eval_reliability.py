"""rag-eval on real disks and real copies (issue #25): a full disk and a read-only store are named with the fix,
re-indexing does not grow the store, a copied run directory finds its collections."""

# ruff: noqa: F811 - fixtures imported from rag_eval_helpers are, by design, the test functions' parameters
from __future__ import annotations

import shutil
import subprocess

from rag_eval_helpers import run_cli, tiny_run_dir  # noqa: F401 - fixture


def _fails(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err and "unexpected" not in err, err
    for needle in needles:
        assert needle in err, err


def _segment_dirs(store):
    return sorted(p.name for p in store.iterdir() if p.is_dir())


def test_reindexing_does_not_grow_the_store(tiny_run_dir, tmp_path, capsys):
    store = tmp_path / "chroma"
    args = ("index", "--model", tiny_run_dir, "--chroma-path", store, "--dims", "16,8")
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    first = _segment_dirs(store)
    assert len(first) == 4  # 2 models x 2 dims, one vector folder each
    code, out, _ = run_cli(capsys, *args)
    assert "kept" in out and "reclaimed" not in out  # unchanged: nothing rewritten
    for _ in range(2):
        code, out, err = run_cli(capsys, *args, "--force")  # every collection rewritten and replaced
        assert code == 0, err
    assert len(_segment_dirs(store)) == 4  # the replaced collections' folders were reclaimed
    assert "reclaimed" in out


def test_a_copied_run_directory_finds_its_collections(tiny_run_dir, tmp_path, capsys):
    original = tmp_path / "original"
    shutil.copytree(tiny_run_dir, original, ignore=shutil.ignore_patterns(".lock"))
    code, _, err = run_cli(capsys, "index", "--model", original, "--dims", "16")
    assert code == 0, err
    moved = tmp_path / "renamed-copy"
    shutil.copytree(original, moved)
    code, out, err = run_cli(capsys, "query", "revenue", "--model", moved, "--dims", "16", "--compare")
    assert code == 0, err
    code, out, err = run_cli(capsys, "score", "--model", moved, "--dims", "16", "--latency-samples", "2",
                          "--no-disk-size")  # fmt: skip
    assert code == 0, err


def test_index_on_a_full_disk_is_named_with_the_fix(tiny_run_dir, mount_tmpfs, capsys):
    disk = mount_tmpfs("160k")
    code, _, err = run_cli(
        capsys, "index", "--model", tiny_run_dir, "--chroma-path", disk / "chroma", "--dims", "32,16,8"
    )
    _fails(code, err, "is full", "free space on that disk")


def test_a_read_only_store_is_named_for_index_and_for_queries(tiny_run_dir, tmp_path, capsys):
    """The store behind a read-only bind mount (root; skips elsewhere): a real read-only file system."""
    import pytest

    store = tmp_path / "chroma"
    code, _, err = run_cli(capsys, "index", "--model", tiny_run_dir, "--chroma-path", store, "--dims", "16")
    assert code == 0, err
    ro = tmp_path / "read-only"
    ro.mkdir()
    done = subprocess.run(["mount", "--bind", str(store), str(ro)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({done.stderr.strip() or 'not root'}): the read-only test needs root")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True, capture_output=True)
        code, _, err = run_cli(capsys, "index", "--model", tiny_run_dir, "--chroma-path", ro, "--dims", "16")
        _fails(code, err, "read-only")
        for command in (("query", "revenue"), ("score", "--latency-samples", "2", "--no-disk-size")):
            code, _, err = run_cli(capsys, *command, "--model", tiny_run_dir, "--chroma-path", ro, "--dims", "16")
            _fails(code, err, "cannot be written by this user", "copy it to a writable place")
    finally:
        from rag_eval import store as chroma_store

        chroma_store.forget_client(ro)
        subprocess.run(["umount", "-l", str(ro)], check=False)
