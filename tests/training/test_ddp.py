"""Two processes on CPU (gloo): same accuracy as one process, and the feature cache is computed once and shared."""

import json
import os
import subprocess
import sys
from pathlib import Path

SFT = Path(sys.executable).with_name("sft")


def train(tmp_path, data, name, *overrides):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("strategy:\n  name: two-stage\n")
    args = [str(SFT), "train", str(recipe), f"data.train={data['train']}", f"data.test={data['test']}",
            "data.classes=[T-shirt, Trouser, Sneaker, Bag]", "data.image_size=32", "model.backbone=timm/test_efficientnet",
            "model.weights=none", "trainer.epochs=3", "trainer.progress=false", "trainer.accelerator=cpu",
            "optim.lr=0.01", f"run_dir={tmp_path / name}", f"cache_dir={tmp_path / 'cache'}",
            # a converged probe head on this random-weight backbone makes the lr-0.01 full phase chaotic (0.88 vs
            # 0.67 between two equally right runs): compare DDP with one process from the plain head
            "strategy.head_init=random",
            *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_two_processes_match_one(tmp_path, fashion_slice):
    one = train(tmp_path, fashion_slice, "one", "data.batch_size=32")
    cached = sorted((tmp_path / "cache").glob("*.pt"))
    two = train(tmp_path, fashion_slice, "two", "data.batch_size=16", "trainer.devices=2", "trainer.strategy=ddp")
    assert sorted((tmp_path / "cache").glob("*.pt")) == cached  # same features: reused, not recomputed
    assert one["test_acc"] > 0.5 and two["test_acc"] > 0.5
    assert abs(one["test_acc"] - two["test_acc"]) <= 0.08, (one["test_acc"], two["test_acc"])
