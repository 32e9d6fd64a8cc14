"""`job push` and `job launch` join the `job` program through entry points (job.plugins): job never imports infra.

Real entry points are read from the installed package's metadata (pyproject.toml's [project.entry-points]); the
failure cases replace importlib.metadata's answer, since a broken or missing add-on cannot be installed here and
removed again within a test.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint

import pytest

from job import cli, plugins
from job.errors import JobError


def test_the_installed_entry_points_add_push_and_launch_and_the_publisher():
    names = [c.name for c in plugins.commands()]
    assert names == ["launch", "push"]
    assert {"push", "launch"} <= set(cli.cli.commands)
    check, push = plugins.publishing()
    assert (check.__module__, check.__name__) == ("infra.publish.cli", "check_destinations")
    assert (push.__module__, push.__name__) == ("infra.publish.cli", "push_run")


def _only(monkeypatch, group_entries: dict[str, list[EntryPoint]]):
    monkeypatch.setattr(plugins, "entry_points", lambda group: group_entries.get(group, []))


def test_a_broken_add_on_command_is_left_out_with_a_warning(monkeypatch, caplog):
    good = EntryPoint("push", "infra.publish.cli:push", plugins.COMMANDS)
    broken = EntryPoint("gcs", "no_such_package.cli:gcs", plugins.COMMANDS)
    _only(monkeypatch, {plugins.COMMANDS: [good, broken]})
    with caplog.at_level(logging.WARNING, logger="job.plugins"):
        assert [c.name for c in plugins.commands()] == ["push"]
    assert "`job gcs` (no_such_package.cli:gcs) is left out" in caplog.text and "ModuleNotFoundError" in caplog.text


def test_publishing_without_the_publisher_installed_is_refused_before_any_step(monkeypatch, tmp_path, capsys):
    _only(monkeypatch, {})
    with pytest.raises(JobError) as refused:
        plugins.publishing()
    assert "no 'job.publish' entry points" in refused.value.problem and "pip install -e ." in refused.value.fix
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--run-dir", str(run_dir), "--publish-dir", str(tmp_path / "out")]) == 2
    assert "Publishing is not installed" in capsys.readouterr().err and not run_dir.exists()


def test_job_push_reads_the_publishing_fields_from_the_environment_as_job_run_does(fake_run_dir, tmp_path, capsys,
                                                                                   monkeypatch):  # fmt: skip
    out = tmp_path / "published"
    monkeypatch.setenv("JOB_PUBLISH_DIR", str(out))
    assert cli.main(["push", "--run-dir", str(fake_run_dir)]) == 0
    assert f"folder {out.resolve()}/" in capsys.readouterr().out
    monkeypatch.setenv("JOB_HUB_PRIVATE", "perhaps")
    assert cli.main(["push", "--run-dir", str(fake_run_dir)]) == 2
    assert "'hub_private' from the environment (JOB_*) has the value 'perhaps'" in capsys.readouterr().err
