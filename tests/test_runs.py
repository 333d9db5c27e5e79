"""The run dir: --overwrite deletes only what is an lmtune run."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import invoke, tiny_config
from lmtune import runs
from lmtune.errors import RunDirError


def test_overwrite_refuses_a_dir_that_is_not_a_run(tmp_path, runner):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    config = tiny_config(tmp_path, output_dir=str(precious))
    result = invoke(runner, "pretrain", config, "--overwrite")
    assert result.exit_code == 2
    assert "not an lmtune run dir" in result.output
    assert (precious / "chapter1.tex").read_text() == "years of work"


def test_overwrite_replaces_a_previous_run(tmp_path, runner):
    config = tiny_config(tmp_path)
    assert invoke(runner, "pretrain", config).exit_code == 0
    (tmp_path / "run" / "stale.txt").write_text("from before")
    assert invoke(runner, "pretrain", config, "--overwrite").exit_code == 0
    assert not (tmp_path / "run" / "stale.txt").exists()


@pytest.mark.parametrize("target", ["cwd", "parent", "home", "root"])
def test_overwrite_never_deletes_the_working_dir_its_parents_home_or_root(tmp_path, monkeypatch, target):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "config.yaml").write_text("a run marker, so only the location refuses")
    monkeypatch.chdir(work)
    path = {"cwd": work, "parent": work.parent, "home": Path.home(), "root": Path("/")}[target]
    with pytest.raises(RunDirError, match="holds more than a run"):
        runs.check_replaceable(path)


def test_overwrite_refuses_a_project_dir_that_merely_has_a_config_yaml(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("my app's own settings")
    (project / "src" / "main.py").write_text("print('years of work')")
    with pytest.raises(RunDirError, match="not an lmtune run dir"):
        runs.check_replaceable(project)
    assert (project / "src" / "main.py").is_file()


def test_overwrite_accepts_a_run_that_stopped_before_its_manifest(tmp_path):
    stopped = tmp_path / "run"
    (stopped / ".tmp-final").mkdir(parents=True)
    (stopped / "config.yaml").write_text("output_dir: run\n")
    runs.check_replaceable(stopped)  # only what lmtune writes: replaceable
    (stopped / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not an lmtune run dir"):
        runs.check_replaceable(stopped)
    (stopped / "manifest.json").write_text('{"lmtune": "0.1.0"}')
    runs.check_replaceable(stopped)  # a manifest lmtune wrote: a run, whatever else is in it


def test_an_output_dir_that_cannot_be_made_is_a_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RunDirError, match="exists and is a file"):
        runs.ensure_writable_dir(tmp_path / "a-file", "the eval output dir")
    with pytest.raises(RunDirError, match="cannot create the eval output dir"):
        runs.ensure_writable_dir(tmp_path / "a-file" / "sub", "the eval output dir")


def test_checking_an_output_dir_creates_nothing(tmp_path):
    runs.check_writable_dir(tmp_path / "a" / "b", "the eval output dir")
    assert not (tmp_path / "a").exists()
