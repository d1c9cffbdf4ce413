"""Ctrl-C or SIGTERM sent to a training `sft train`: it writes a checkpoint at the current step, exits 130 / 143
saying how to resume, and the resumed run ends with the weights of the uninterrupted one. Ctrl-C in a terminal
signals the whole process group, the loader workers with it: the test does the same."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import sft, tiny_args
from tests.training.test_resume import same_weights

# `sft train` in a child process; at step STEP it tells the parent (READY) and waits there for the signal
CHILD = textwrap.dedent("""
    import os, pathlib, sys, time
    from lightning.pytorch.callbacks import Callback
    import sft.training.fit as fit

    class WaitForSignal(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(os.environ["STEP"]):
                pathlib.Path(os.environ["READY"]).touch()
                for _ in range(600):
                    if any(getattr(c, "signum", None) for c in trainer.callbacks):
                        break
                    time.sleep(0.05)

    train = fit.fine_tune
    fit.fine_tune = lambda *a, **k: train(*a, **{**k, "callbacks": [WaitForSignal()]})
    from sft.cli import app
    app(sys.argv[1:])
""")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130)])  # SIGTERM, 143: test_ddp's launcher test
def test_a_signal_writes_a_checkpoint_exits_and_the_resumed_run_equals_the_whole_one(tmp_path, fashion_slice,
                                                                                     recipe_file, signum, code):
    extra = ("strategy.name=full", "trainer.epochs=2", "data.augment=light", "model.dropout=0.2", "data.batch_size=32",
             "data.num_workers=1")
    whole = tmp_path / "whole"
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, whole), *extra).exit_code == 0
    args = [*tiny_args(tmp_path, fashion_slice), *extra]
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", CHILD, "train", str(recipe_file), *args], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                             env={**os.environ, "STEP": "10", "READY": str(ready), "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while not ready.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert ready.exists(), child.communicate()[1][-3000:]
    os.killpg(child.pid, signum)  # as a terminal does: sft and its loader worker
    out, err = child.communicate(timeout=120)
    text = " ".join(err.split())
    assert child.returncode == code, err[-3000:]
    assert "Traceback" not in err and "exited unexpectedly" not in err
    assert text.count("stopped by") == 1
    assert f"stopped by {signal.Signals(signum).name} at epoch 2, step 10" in text
    saved = tmp_path / "run" / "recipe.yaml"  # the command it prints is the one that resumes
    assert f"Continue it with `sft train {saved} --resume`" in text
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = sft("train", saved, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert same_weights(whole, tmp_path / "run") == []  # the epoch went on from batch 4 of 7, as if never stopped
