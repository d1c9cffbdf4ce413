"""`sft sweep` on the tiny image task: two workers killed mid-sweep and resumed, pruning, and the folder's guard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sft import load_recipe
from tests.conftest import sft, tiny_args
from tests.tasks.classification.test_report import CHROMIUM, chromium

SPACE = "optim.lr: {log: [1e-3, 1e-1]}\nstrategy.name: [linear-probe, full]\n"


def setup(tmp_path, fashion_slice, *extra: str, space: str = SPACE) -> tuple[Path, list[str]]:
    """A recipe file (the tiny image task, 3 epochs) and the space file."""
    args = [a for a in tiny_args(tmp_path, fashion_slice) if not a.startswith(("trainer.epochs", "strategy.name",
                                                                              "run_dir"))]
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("".join(f"{k}: {v}\n" for k, v in (a.split("=", 1) for a in args if "." not in a.split("=")[0]))
                      + "trainer:\n  epochs: 3\n")
    (tmp_path / "space.yaml").write_text(space)
    return recipe, [a for a in args if "." in a.split("=")[0]] + list(extra)


def states(folder: Path) -> list[dict]:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "study.journal")))
    names = optuna.get_all_study_names(storage)
    assert names == [folder.name]  # one study
    return [{"number": t.number, "state": t.state.name, "attrs": t.user_attrs, "params": t.params,
             "value": t.value} for t in optuna.load_study(study_name=names[0], storage=storage).trials]


def test_a_killed_sweep_of_two_workers_resumes_to_its_trials(tmp_path, fashion_slice):
    recipe, args = setup(tmp_path, fashion_slice)
    folder = tmp_path / "sweep"
    command = [sys.executable, "-m", "sft.cli", "sweep", str(recipe), *args, "--space", str(tmp_path / "space.yaml"),
               "--trials", "4", "--workers", "2", "--out", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while True:  # kill the whole sweep once a trial has finished and another is training
        time.sleep(0.3)
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()[-3000:]
        if (folder / "study.journal").exists():
            now = states(folder)
            running = [t for t in now if t["state"] == "RUNNING" and
                       Path(t["attrs"].get("sft.run_dir", "-"), "checkpoints", "last.ckpt").exists()]
            if running and any(t["state"] == "COMPLETE" for t in now):
                break
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed = {t["number"]: t["attrs"]["sft.run_dir"] for t in states(folder) if t["state"] == "RUNNING"}

    again = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Traceback" not in again.stdout + again.stderr
    assert all(f"trial {n} was interrupted" in again.stdout for n in killed)
    final = states(folder)
    interrupted = [t for t in final if t["state"] == "FAIL" and t["attrs"].get("sft.interrupted")]
    counted = [t for t in final if t not in interrupted]
    assert {t["number"] for t in interrupted} == set(killed)
    assert len(counted) == 4 and all(t["state"] in ("COMPLETE", "PRUNED") for t in counted)
    for t in counted:  # each retry continued its trial's own run folder
        if "sft.retry_of" in t["attrs"]:
            assert t["attrs"]["sft.run_dir"] == killed[t["attrs"]["sft.retry_of"]]
    assert "(resumed)" in again.stdout  # a killed trial with a checkpoint went on from it

    summary = json.loads((folder / "summary.json").read_text())
    best = next(t for t in final if t["number"] == summary["best_trial"])
    assert best["state"] == "COMPLETE" and best["value"] == max(t["value"] for t in counted if t["value"] is not None)
    assert summary["test"]["accuracy"] == json.loads((folder / "best-test" / "metrics.json").read_text())["accuracy"]
    chosen = load_recipe(folder / "best.yaml")  # a recipe sft train takes, test split included
    assert chosen.optim.lr == pytest.approx(best["params"]["optim.lr"]) and chosen.data.test is not None
    assert chosen.strategy.name == best["params"]["strategy.name"]
    rows = (folder / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,value,optim.lr,strategy.name") and len(rows) == 1 + len(final)
    for trial in counted:  # only validation chose: no trial scored the test split (one pruned after its first
        saved = Path(trial["attrs"]["sft.run_dir"]) / "recipe.yaml"  # epoch has no checkpoint, and no folder)
        assert load_recipe(saved).data.test is None if trial["state"] == "COMPLETE" or saved.exists() else True
    if os.path.exists(CHROMIUM):
        _, dom = chromium(folder / "sweep.html", tmp_path, tmp_path / "sweep.png")
        assert dom.count("<figure>") == 4 and dom.count("<tr") >= len(final) + 3


def test_a_trial_below_the_median_is_pruned(tmp_path, fashion_slice):
    """Three trials at a good rate, then one at a rate that learns nothing: the median rule stops it after its first
    epoch."""
    from sft.sweep.study import Settings, _open_folder, finish, open_study, work
    recipe, args = setup(tmp_path, fashion_slice, "strategy.head_init=random",
                         space="optim.lr: {log: [1e-8, 1e-1]}\nstrategy.name: [linear-probe, full]\n")
    s = Settings(str(recipe), args, 4, 1, str(tmp_path / "sweep"), None, "sweep", 0)
    _open_folder(s, tmp_path / "space.yaml", resume=False, overwrite=False, keep=())
    study = open_study(s, "max")
    for lr in (0.05, 0.05, 0.05, 1e-7):
        study.enqueue_trial({"optim.lr": lr, "strategy.name": "linear-probe"})
    work(s, 0, print)
    summary = finish(s, study, seconds=1.0, say=print)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["PRUNED"]
    assert list(trials[3].intermediate_values) == [0]  # stopped at the first epoch's end, of 3
    assert summary["pruned_share"] == 0.25 and summary["best_trial"] in (0, 1, 2)
    assert not (Path(trials[3].user_attrs["sft.run_dir"]) / "metrics.json").exists()  # an unfinished run


def test_the_sweep_folder_is_guarded(tmp_path, fashion_slice):
    recipe, args = setup(tmp_path, fashion_slice)
    folder = tmp_path / "sweep"
    common = [recipe, *args, "--space", tmp_path / "space.yaml", "--out", folder]
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = sft("sweep", *common, "--trials", "1")
    assert result.exit_code == 2 and "not written by sft" in result.output
    (folder / "notes.txt").unlink()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # a sweep run in this process gives back the threads it took (another run here would compute otherwise)
        assert sft("sweep", *common, "--trials", "1").exit_code == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    result = sft("sweep", *common, "--trials", "2")
    assert result.exit_code == 2 and "pass --resume to continue or join it" in result.output
    (tmp_path / "other.yaml").write_text("optim.lr: {log: [1e-4, 1e-2]}\n")
    result = sft("sweep", recipe, *args, "--space", tmp_path / "other.yaml", "--out", folder, "--resume")
    assert result.exit_code == 2 and "differs from the space" in result.output
    result = sft("sweep", *common, "--trials", "2", "--resume")  # one more trial: the study has 2
    assert result.exit_code == 0, result.output
    assert len((folder / "trials.csv").read_text().splitlines()) == 3
    assert np.isfinite(json.loads((folder / "summary.json").read_text())["best_value"])


def test_a_storage_optuna_cannot_open_is_a_clear_error_before_any_folder(tmp_path, fashion_slice):
    recipe, args = setup(tmp_path, fashion_slice)
    result = sft("sweep", recipe, *args, "--space", tmp_path / "space.yaml", "--out", tmp_path / "sweep",
                 "--storage", "nosuch://host/db")
    assert result.exit_code == 2 and "--storage nosuch://host/db: Optuna cannot open it" in result.output
    assert not (tmp_path / "sweep").exists()
