"""Never delete what is not ours: sft replaces only folders it wrote (their marker), never the data, the current or
the home directory, and one run directory takes one training process at a time."""

import json
import os

import pytest
from sft.core.rundir import RANK_VARIABLES, RunDir, check_replaceable, folder_kind, is_child_process, replace_folder
from sft.errors import UserError
from tests.conftest import sft, tiny_args


def test_a_folder_of_the_user_is_refused_even_with_overwrite(tmp_path, recipe_file, fashion_slice):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("draft")
    for flags in ([], ["--overwrite"]):
        result = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, mine), *flags)
        assert result.exit_code == 2 and "not written by sft" in result.output and "thesis.txt" in result.output
        assert "unfinished run" not in result.output
    assert (mine / "thesis.txt").read_text() == "draft" and len(list(mine.iterdir())) == 1


def test_a_run_is_replaced_only_when_asked_and_carries_its_marker(tmp_path, recipe_file, fashion_slice):
    run = tmp_path / "run"
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, run)).exit_code == 0
    assert json.loads((run / ".sft-run").read_text()) == {"kind": "run", "task": "image-classification"}
    again = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, run))
    assert again.exit_code == 2 and "already holds a finished run" in again.output
    (run / "notes.txt").write_text("kept?")
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, run), "--overwrite").exit_code == 0
    assert not (run / "notes.txt").exists() and (run / "metrics.json").exists()


def test_the_data_and_the_current_directory_are_never_removed(tmp_path, recipe_file, fashion_slice, monkeypatch):
    run = tmp_path / "run"
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, run)).exit_code == 0
    data = {"train": run / "train.npz", "test": fashion_slice["test"]}  # the user keeps data inside a run
    data["train"].write_bytes(fashion_slice["train"].read_bytes())
    result = sft("train", recipe_file, *tiny_args(tmp_path, data, run), "--overwrite")
    assert result.exit_code == 2 and "the data" in result.output and data["train"].exists()
    monkeypatch.chdir(run)
    result = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, "."), "--overwrite")
    assert result.exit_code == 2 and "current directory" in result.output and (run / "model.json").exists()


def test_a_second_training_into_a_locked_run_is_refused(tmp_path, recipe_file, fashion_slice):
    run = tmp_path / "run"
    lock = RunDir(run).lock()
    lock.acquire()  # another process is training into run/
    try:
        result = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, run))
        assert result.exit_code == 2 and "another sft process is training into this folder" in result.output
        assert not run.exists()
    finally:
        lock.release()


def test_eval_out_replaces_only_an_evaluation(tmp_path, recipe_file, fashion_slice):
    run = tmp_path / "run"
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, run)).exit_code == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"not really")
    result = sft("eval", run, "--out", photos, "--overwrite", "--top-losses", "0")
    assert result.exit_code == 2 and "not written by sft" in result.output and (photos / "cat.jpg").exists()
    data_dir = fashion_slice["train"].parent
    result = sft("eval", run, "--out", data_dir, "--overwrite", "--top-losses", "0")
    assert result.exit_code == 2 and fashion_slice["train"].exists()
    out = tmp_path / "evaluation"
    assert sft("eval", run, "--out", out, "--top-losses", "0").exit_code == 0
    assert folder_kind(out) == "eval"
    assert sft("eval", run, "--out", out, "--overwrite", "--top-losses", "0").exit_code == 0


def test_compare_out_never_overwrites_a_file_it_did_not_write(tmp_path, recipe_file, fashion_slice):
    run = tmp_path / "run"
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, run)).exit_code == 0
    page = tmp_path / "essay.html"
    page.write_text("<p>my essay</p>")
    result = sft("compare", run, "--out", page)
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = sft("compare", run, "--out", page, "--overwrite")
    assert result.exit_code == 2 and "not written by sft compare" in result.output
    assert page.read_text() == "<p>my essay</p>"
    fresh = tmp_path / "compare.html"
    assert sft("compare", run, "--out", fresh).exit_code == 0
    assert sft("compare", run, "--out", fresh, "--overwrite").exit_code == 0


def test_check_replaceable_kinds_and_files(tmp_path):
    assert check_replaceable(tmp_path / "new", "audit", overwrite=False) is False
    replace_folder(tmp_path / "audit", "audit")
    (tmp_path / "audit" / "audit.json").write_text("{}")
    with pytest.raises(UserError, match="already holds an audit"):
        check_replaceable(tmp_path / "audit", "audit", overwrite=False)
    assert check_replaceable(tmp_path / "audit", "audit", overwrite=True) is True
    with pytest.raises(UserError, match="holds an audit, not a ranking"):
        check_replaceable(tmp_path / "audit", "rank", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_replaceable(tmp_path / "file", "run", overwrite=True)
    home = tmp_path / "home"
    replace_folder(home, "run")
    (home / "x").write_text("x")
    os.environ["HOME"], old = str(home), os.environ.get("HOME")
    try:
        with pytest.raises(UserError, match="home directory"):
            check_replaceable(home, "run", overwrite=True)
    finally:
        os.environ["HOME"] = old


@pytest.mark.parametrize("variable", ["RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID",
                                      "JSM_NAMESPACE_RANK"])
def test_every_launcher_s_other_processes_are_children(monkeypatch, variable):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not is_child_process()
    monkeypatch.setenv(variable, "0")
    assert not is_child_process()  # rank 0 of torchrun, SLURM, ... checks, locks and writes the run directory
    monkeypatch.setenv(variable, "3")
    assert is_child_process()
