"""A run's randomness per epoch is a function of (seed, epoch, rank): a process killed with SIGKILL and resumed in a
new one, or a run whose feature cache was warm instead of cold, ends with the same weights, augmentation on."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from sft import fine_tune
from sft.recipe import dump_recipe
from tests.conftest import tiny_recipe

KILLER = textwrap.dedent("""
    import os, signal, sys
    from lightning.pytorch.callbacks import Callback
    from sft import fine_tune, load_recipe

    class Kill(Callback):
        def on_train_epoch_end(self, trainer, module):  # runs after the epoch's last.ckpt is written
            if trainer.current_epoch == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    fine_tune(load_recipe(sys.argv[1]), callbacks=[Kill()])
""")


def same_weights(a, b) -> list[str]:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return [k for k in x if not torch.equal(x[k], y[k])]


@pytest.mark.parametrize("strategy", ["full", "gradual"])
def test_killed_and_resumed_in_a_new_process_equals_the_uninterrupted_run(tmp_path, fashion_slice, strategy):
    args = (f"strategy.name={strategy}", "trainer.epochs=3", "data.augment=light")
    whole = fine_tune(tiny_recipe(tmp_path / "a", fashion_slice, *args))
    recipe = tiny_recipe(tmp_path / "b", fashion_slice, *args)
    path = tmp_path / "b.yaml"
    path.write_text(dump_recipe(recipe))
    done = subprocess.run([sys.executable, "-c", KILLER, str(path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert (tmp_path / "b" / "run" / "checkpoints" / "last.ckpt").exists()
    resumed = fine_tune(recipe, resume=True)
    assert same_weights(whole.dir, resumed.dir) == []
    m = resumed.metrics  # the speed of the resumed process counts its own epochs only
    assert m["resumed_from_epoch"] in (1, 2) and m["epochs"] == 3
    expected = m["train_samples"] * (3 - m["resumed_from_epoch"]) / m["train_seconds"]
    assert m["samples_per_second"] == pytest.approx(expected, rel=0.02)
    assert resumed.metrics["test_acc"] == whole.metrics["test_acc"]


def test_a_warm_feature_cache_gives_the_same_run_as_a_cold_one(tmp_path, fashion_slice):
    args = ("strategy.name=two-stage", "trainer.epochs=3", "data.augment=light", f"cache_dir={tmp_path / 'cache'}")
    cold = fine_tune(tiny_recipe(tmp_path / "cold", fashion_slice, *args))
    assert any((tmp_path / "cache").iterdir())
    warm = fine_tune(tiny_recipe(tmp_path / "warm", fashion_slice, *args))
    assert same_weights(cold.dir, warm.dir) == []
