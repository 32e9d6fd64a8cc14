"""The folder destination (`--publish-dir`, infra/publish/folder.py; issue #31 item 2): the S3 rules on a local or
mounted folder. The full and read-only disks are real tmpfs mounts (root only; skipped elsewhere, saying why)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import make_run_dir

from infra.publish import bundle
from infra.publish.destinations import FolderDestination, destinations
from infra.publish.folder import check_folder, publish_folder
from job import cli
from job.errors import JobError


def _tree(folder):
    """The files under ``folder``, leaving out the manifest's temporary file (``.manifest.*.tmp``)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith(".manifest."))  # fmt: skip


def test_a_run_is_copied_verified_and_its_manifest_written_last(fake_run_dir, tmp_path, monkeypatch):
    out = tmp_path / "models"
    order = []
    real_link = os.link
    monkeypatch.setattr(os, "link", lambda a, b: (order.append(("manifest", _tree(out))), real_link(a, b))[1])
    pub = publish_folder(fake_run_dir, out)
    run_id = bundle.run_id_for(fake_run_dir)
    assert pub.status == "published" and pub.path == out.resolve() / run_id
    files = bundle.run_files(fake_run_dir)
    assert _tree(pub.path) == sorted([f.path for f in files] + [bundle.MANIFEST_NAME])
    assert order[0][1] == sorted(f"{run_id}/{f.path}" for f in files)  # every file there before the manifest
    manifest = json.loads((pub.path / bundle.MANIFEST_NAME).read_text())
    assert manifest["content_sha256"] == bundle.content_digest(files) and manifest["file_count"] == len(files)
    assert manifest["published_to"] == f"file://{pub.path}/"
    assert publish_folder(fake_run_dir, out).status == "already published"


def test_a_changed_file_is_copied_again_and_a_leftover_copy_replaced(fake_run_dir, tmp_path, capsys):
    out = tmp_path / "models"
    pub = publish_folder(fake_run_dir, out, echo=print)
    victim = pub.path / bundle.run_files(fake_run_dir)[0].path
    victim.write_bytes(b"rotten")
    assert publish_folder(fake_run_dir, out, echo=print).status == "republished"
    assert victim.read_bytes() == bundle.run_files(fake_run_dir)[0].local.read_bytes()
    (pub.path / bundle.MANIFEST_NAME).unlink()  # an interrupted copy: files, no manifest
    (pub.path / "junk.bin").write_bytes(b"x")
    assert publish_folder(fake_run_dir, out, echo=print).status == "published"
    assert not (pub.path / "junk.bin").exists() and "no manifest (an interrupted copy)" in capsys.readouterr().out


def test_another_run_in_the_same_sub_folder_is_left_untouched(fake_run_dir, tmp_path):
    out = tmp_path / "models"
    pub = publish_folder(fake_run_dir, out)
    other = make_run_dir(tmp_path / "other", weights=b"other weights", ndcg=0.9)
    before = {p: p.read_bytes() for p in pub.path.rglob("*") if p.is_file()}
    with pytest.raises(JobError, match="already holds a different published run") as err:
        publish_folder(other, out, run_id=pub.run_id)
    assert "--publish-dir" in err.value.fix
    assert {p: p.read_bytes() for p in pub.path.rglob("*") if p.is_file()} == before


def test_a_copy_that_does_not_read_back_writes_no_manifest(fake_run_dir, tmp_path, monkeypatch):
    from infra.publish import folder

    monkeypatch.setattr(folder, "sha256_file", lambda path: "0" * 64)
    with pytest.raises(JobError, match="Checksum verification failed .* No manifest was written"):
        publish_folder(fake_run_dir, tmp_path / "models")
    assert not list((tmp_path / "models").rglob(bundle.MANIFEST_NAME))


def test_bad_folders_are_named_before_anything_is_written(fake_run_dir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(JobError, match="is a file, not a folder"):
        check_folder(a_file)
    with pytest.raises(JobError, match="--publish-dir is empty"):
        check_folder(" ")
    assert [type(d) for d in destinations(publish_dir=str(tmp_path / "m"), s3_uri=None)] == [FolderDestination]
    check_folder(tmp_path / "new" / "deep", fake_run_dir)  # made, written to, and large enough
    assert (tmp_path / "new" / "deep").is_dir() and not list((tmp_path / "new" / "deep").iterdir())


def test_a_full_disk_and_a_read_only_folder_are_clear_errors_and_lose_nothing(fake_run_dir, tmp_path, mount_tmpfs):
    small = mount_tmpfs("16k")  # four pages; the run is about 19 kB
    (small / "kept.txt").write_text("published before")
    with pytest.raises(JobError) as full:  # the check compares the free space with the run's size
        check_folder(small, fake_run_dir)
    assert "MB free; the run needs" in full.value.problem
    with pytest.raises(JobError) as full:  # publishing anyway: the write itself fails
        publish_folder(fake_run_dir, small)
    assert "disk is full" in full.value.problem and "publish again" in full.value.fix
    assert (small / "kept.txt").read_text() == "published before"
    assert not list(small.rglob(bundle.MANIFEST_NAME))
    read_only = mount_tmpfs("1m", read_only=True)
    with pytest.raises(JobError, match="read-only file system") as ro:
        check_folder(read_only, fake_run_dir)
    assert "--publish-dir" in ro.value.fix


def test_job_push_publishes_to_a_folder_and_job_run_checks_it_first(fake_run_dir, tmp_path, capsys):
    out = tmp_path / "models"
    assert cli.main(["push", "--run-dir", str(fake_run_dir), "--publish-dir", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"push: {fake_run_dir} -> folder {out.resolve()}/") and "(published:" in line
    a_file = tmp_path / "file"
    a_file.write_text("x")
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--run-dir", str(run_dir), "--publish-dir", str(a_file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and not run_dir.exists()
