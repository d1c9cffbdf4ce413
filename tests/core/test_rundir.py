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
    assert result.exit_code == 2 and "which this command reads" in result.output and data["train"].exists()
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


def snapshot(folder) -> dict:
    """Every file under `folder`, byte for byte."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_unmarked_folder_that_looks_like_a_run_keeps_every_file_of_the_user(tmp_path, recipe_file, fashion_slice):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "recipe.yaml").write_text(recipe_file.read_text())
    (proj / "model.json").write_text("{}")
    (proj / "notes.txt").write_text("notes")
    before = snapshot(proj)
    result = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, proj), "--overwrite")
    assert result.exit_code == 2 and "notes.txt" in result.output and "earlier sft" in result.output, result.output
    assert snapshot(proj) == before
    (proj / "notes.txt").unlink()  # an earlier sft's run holding only what sft writes is replaced
    (proj / "checkpoints").mkdir()
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, proj), "--overwrite").exit_code == 0
    assert folder_kind(proj) == "run" and (proj / ".sft-run").is_file()


def test_an_unmarked_folder_that_looks_like_an_evaluation_keeps_the_user_s_files(tmp_path, recipe_file,
                                                                                 fashion_slice):
    run = tmp_path / "run"
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, run)).exit_code == 0
    results = tmp_path / "results"
    results.mkdir()
    for name, text in (("results.json", "{}"), ("metrics.json", "{}"), ("paper.tex", "draft")):
        (results / name).write_text(text)
    before = snapshot(results)
    result = sft("eval", run, "--out", results, "--overwrite", "--top-losses", "0")
    assert result.exit_code == 2 and "paper.tex" in result.output, result.output
    assert snapshot(results) == before


def test_a_recipe_inside_the_folder_being_replaced_is_refused_up_front(tmp_path, recipe_file, fashion_slice):
    run = tmp_path / "run"
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, run)).exit_code == 0
    mine = run / "my_recipe.yaml"
    mine.write_text(recipe_file.read_text())
    before = snapshot(run)
    result = sft("train", mine, *tiny_args(tmp_path, fashion_slice, run), "--overwrite")
    assert result.exit_code == 2 and "my_recipe.yaml, which this command reads" in " ".join(result.output.split())
    assert snapshot(run) == before
    result = sft("train", run / "recipe.yaml", "--overwrite")  # the run's own recipe, replacing its own run
    assert result.exit_code == 2 and "recipe.yaml, which this command reads" in " ".join(result.output.split())
    assert snapshot(run) == before


def test_locks_are_keyed_by_the_resolved_folder_and_left_nowhere(tmp_path, recipe_file, fashion_slice, monkeypatch):
    from sft.core.lock import FolderLock
    runs = tmp_path / "runs"
    runs.mkdir()
    (tmp_path / "link").symlink_to(runs)
    lock = FolderLock(runs / "a")
    assert lock.acquire()
    try:  # the same folder through a symlink takes the same lock
        result = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, tmp_path / "link" / "a"))
        assert result.exit_code == 2 and "another sft process is training into this folder" in result.output
    finally:
        lock.release()
    assert not lock.path.exists()
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, runs / "a")).exit_code == 0
    assert sft("eval", runs / "a", "--top-losses", "0").exit_code == 0
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, ".")).exit_code == 0
    assert sorted(p.name for p in runs.iterdir()) == ["a"]
    assert [p for p in tmp_path.rglob("*lock*")] == []  # nothing beside or inside the runs, nothing in the user's folder
    assert not FolderLock(runs / "a").path.exists() and not FolderLock(here).path.exists()  # released and removed


def test_an_unmarked_run_with_a_file_of_the_user_deep_inside_is_left_untouched(tmp_path):
    """Names alone do not make a folder sft's: model/, export-*/ and the rest are checked file by file."""
    legacy = tmp_path / "legacy"
    for name, text in (("recipe.yaml", ""), ("model.json", "{}"), ("checkpoints/last.ckpt", "x"),
                       ("export-final/deliverable.onnx", "mine"), ("model/my_weights.bin", "mine")):
        (legacy / name).parent.mkdir(parents=True, exist_ok=True)
        (legacy / name).write_text(text)
    assert folder_kind(legacy) is None
    with pytest.raises(UserError, match="export-final/deliverable.onnx, model/my_weights.bin"):
        check_replaceable(legacy, "run", overwrite=True)
    for mine in ("export-final/deliverable.onnx", "model/my_weights.bin"):
        (legacy / mine).unlink()
    assert check_replaceable(legacy, "run", overwrite=True) is True  # what sft wrote, and nothing else


def test_a_lock_folder_open_to_others_is_refused(tmp_path, monkeypatch):
    from sft.core import lock
    shared = tmp_path / "locks"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # another user could unlink or pre-create our locks here
    monkeypatch.setattr(lock, "lock_folder", lambda: shared)
    with pytest.raises(UserError, match="not a private folder of yours"):
        lock.FolderLock(tmp_path / "run").acquire()
    shared.chmod(0o700)
    with lock.holding(tmp_path / "cache.pt"):
        assert list(shared.iterdir())
    assert not list(shared.iterdir())
