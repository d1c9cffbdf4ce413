"""`sft lr-find`: the LR range test on the recipe's own model and groups, its suggestions, files, divergence, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sft.cli import app
from sft.tasks import get_task
from sft.training.lr_find import LRSweep, find_lr, suggest
from tests.conftest import tiny_recipe

__import__("sft.training.fit")  # imports Lightning now, so its log handler binds to the real stderr, not the runner's
runner = CliRunner()
SFT = Path(sys.executable).with_name("sft")


def test_suggestions_on_a_known_curve():
    lrs = list(np.logspace(-7, 1, 100))
    x = np.log10(lrs)
    # flat, then falling fastest around 1e-3, bottom near 1e-1, then blowing up
    losses = list(2.0 - 1.5 / (1 + np.exp(-3 * (x + 3))) + np.where(x > -1, (x + 1) ** 2, 0))
    suggestion, valley, steep = suggest(lrs, losses)
    assert 1e-4 < steep < 1e-2 and abs(np.log10(steep) + 3) < 0.2
    # fastai's valley: half-way along the longest descending stretch (here from the trimmed start to the minimum
    # near 1e-1, in log steps), so well before the minimum
    assert 1e-5 < valley < 1e-2 and abs(np.log10(valley) - (-6.2 - 1) / 2) < 0.3
    assert valley < suggestion < steep and suggestion == pytest.approx(np.sqrt(valley * steep))
    assert suggest(lrs, losses, head_only=True) == (steep, valley, steep)  # a head alone: the bold pick


def test_every_group_keeps_its_ratio_to_the_head():
    groups = [{"lr": 0.01}, {"lr": 0.1}, {"lr": 1.0}]  # built at ratio/1: backbone groups, then the head
    trainer = SimpleNamespace(optimizers=[SimpleNamespace(param_groups=groups)])
    sweep = LRSweep(1e-6, 1.0, 7)
    sweep.on_train_start(trainer, None)
    for i in range(7):
        sweep.on_train_batch_start(trainer, None, None, i)
        assert [g["lr"] for g in groups] == pytest.approx([sweep.lrs[-1] * r for r in (0.01, 0.1, 1.0)])
    assert sweep.lrs == pytest.approx(list(np.logspace(-6, 0, 7)))


def test_find_lr_on_a_tiny_run_writes_plot_and_json(tmp_path, fashion_slice):
    recipe = tiny_recipe(tmp_path, fashion_slice, "strategy.name=linear-probe", "optim.lr=find")
    out = tmp_path / "lrf"
    result = find_lr(get_task(recipe.task), recipe, out, start=1e-5, end=10, steps=40)
    assert 1e-5 <= result["valley"] <= result["steep"] <= 10
    assert result["head_only"] and result["suggestion"] == result["steep"]  # linear probe: the head alone trains
    assert result["lrs"][0] == pytest.approx(1e-5) and len(result["lrs"]) == len(result["losses"])
    assert (out / "lr_find.png").stat().st_size > 10_000
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["suggestion"] == result["suggestion"] and saved["strategy"] == "linear-probe"
    assert set(saved["group_ratios"].values()) == {1.0}  # linear probe: no layer-wise decay
    # the head on frozen features learns over this range: the loss falls before the suggestion is reached
    assert min(result["losses"]) < result["losses"][0] - 0.05
    with pytest.raises(Exception, match="--overwrite"):
        find_lr(get_task(recipe.task), recipe, out, start=1e-5, end=10, steps=40)


def test_divergence_at_once_is_a_user_error_with_exit_code_2(tmp_path, fashion_slice):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("strategy:\n  name: linear-probe\n")
    args = [f"data.train={fashion_slice['train']}", "data.classes=[T-shirt, Trouser, Sneaker, Bag]",
            "data.image_size=32", "model.backbone=timm/test_efficientnet", "model.weights=none",
            "optim.name=sgd", "trainer.progress=false", f"run_dir={tmp_path / 'run'}",
            f"cache_dir={tmp_path / 'cache'}"]
    result = runner.invoke(app, ["lr-find", str(recipe), *args, "--start", "1e5", "--end", "1e7", "--steps", "20"])
    assert result.exit_code == 2, result.output
    assert "diverged at once" in result.output and "--start" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run-lr-find" / "lr_find.json").exists()


def test_two_processes_stop_together(tmp_path, fashion_slice):
    """DDP on CPU: a sweep that diverges half-way stops on both processes (the loss is averaged across them, or
    one would wait for the other forever) and rank 0 alone writes the result."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("strategy:\n  name: linear-probe\n")
    args = [str(SFT), "lr-find", str(recipe), f"data.train={fashion_slice['train']}",
            "data.classes=[T-shirt, Trouser, Sneaker, Bag]", "data.image_size=32", "data.batch_size=16",
            "model.backbone=timm/test_efficientnet", "model.weights=none", "optim.name=sgd",
            "trainer.progress=false", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
            f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
            "--start", "1e-3", "--end", "1e6", "--steps", "40"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "run-lr-find" / "lr_find.json").read_text())
    assert result["stopped_early"] and result["steps_done"] < 40
    assert 1e-3 <= result["suggestion"] <= 1e6
    assert sorted(p.name for p in (tmp_path / "run-lr-find").iterdir()) == [".sft-run", "lr_find.json", "lr_find.png"]
    assert torch.distributed.is_available()
