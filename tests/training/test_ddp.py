"""Two processes on CPU (gloo): a run whose processes are killed with SIGKILL resumes to the uninterrupted run's
weights (the match with one process and the shared feature cache: tests/training/test_nodes.py)."""

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sft.recipe import dump_recipe
from tests.conftest import tiny_recipe
from tests.training.test_resume import same_weights



# `sft train` whose ranks record their pids, and at a step one kills itself with SIGKILL (or, READY given, says so
# and waits there for a signal); a file, as Lightning launches rank 1 by running the same script again
KILLER = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    from lightning.pytorch.callbacks import Callback
    import sft.training.fit as fit

    STEP, RANK = int(os.environ["KILL_STEP"]), int(os.environ["KILL_RANK"])
    pathlib.Path(os.environ["PIDS"], str(os.getpid())).touch()

    class Kill(Callback):  # runs before the checkpoint callbacks: last.ckpt is an earlier step's
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step != STEP or trainer.global_rank != RANK:
                return
            if not os.environ.get("READY"):
                os.kill(os.getpid(), signal.SIGKILL)
            pathlib.Path(os.environ["READY"]).touch()
            for _ in range(600):
                if any(getattr(c, "signum", None) for c in trainer.callbacks):
                    break
                time.sleep(0.05)

    train = fit.fine_tune
    fit.fine_tune = lambda *a, **k: train(*a, **{**k, "callbacks": [Kill()]})
    from sft.cli import app
    app(sys.argv[1:])
""")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to read its status has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def two_ranks(tmp_path, recipe: Path, *args, step: int = -1, rank: int = 0, send: int | None = None):
    """`sft train RECIPE ARGS` on 2 CPU processes, `rank` killed at `step` (or, `send` given, the launcher sent that
    signal while rank 0 waits at `step`); (exit code, stderr) once no process of the run is left (all of them are
    killed at the end whatever happens)."""
    pids, ready = tmp_path / f"pids-{recipe.stem}-{step}", tmp_path / f"ready-{step}"
    pids.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KILL_STEP": str(step), "KILL_RANK": str(rank), "PIDS": str(pids),
           "READY": str(ready) if send else ""}
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    child = subprocess.Popen([sys.executable, str(script), "train", str(recipe), *args], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        if send:
            deadline = time.time() + 240
            while not ready.exists() and child.poll() is None and time.time() < deadline:
                time.sleep(0.1)
            assert ready.exists(), child.communicate()[1][-3000:]
            child.send_signal(send)  # the launcher alone, as `kill PID` does
        _, err = child.communicate(timeout=300)
        deadline = time.time() + 20  # the other rank: gone with it, not waiting in a collective
        while any(alive(int(p.name)) for p in pids.iterdir()) and time.time() < deadline:
            time.sleep(0.2)
        left = [p.name for p in pids.iterdir() if alive(int(p.name))]
        assert not left, f"still running after rank {rank} was killed at step {step}: {left}\n{err[-3000:]}"
        return child.returncode, err
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)


DDP_ARGS = ("strategy.name=full", "trainer.epochs=2", "data.augment=light", "model.dropout=0.2", "data.batch_size=8",
            "data.train_limit=120", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_two_processes_killed_inside_epochs_resume_to_the_uninterrupted_weights(tmp_path, fashion_slice):
    """kill -9 of the launcher at a random step of epoch 1, then of rank 1 at a random step of epoch 2 of the
    resumed run: no process is left behind either time, and the second resume ends with the weights of the
    uninterrupted 2-process run. 108 training images, 8 per step and process: 7 steps an epoch."""
    args = DDP_ARGS
    whole, killed = tmp_path / "whole.yaml", tmp_path / "killed.yaml"
    whole.write_text(dump_recipe(tiny_recipe(tmp_path / "a", fashion_slice, *args)))
    killed.write_text(dump_recipe(tiny_recipe(tmp_path / "b", fashion_slice, *args, "trainer.checkpoint_steps=2")))
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    code, err = two_ranks(tmp_path, whole)
    assert code == 0, err[-3000:]

    first, second = random.randint(3, 6), random.randint(9, 13)
    code, err = two_ranks(tmp_path, killed, step=first, rank=0)
    assert code == -signal.SIGKILL, err[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] in (first - 2, first - 1), first

    code, err = two_ranks(tmp_path, killed, "--resume", step=second, rank=1)
    # the launcher names the killed rank, unless Lightning's watcher of its ranks (every 5 s) kills it first
    assert code in (128 + signal.SIGKILL, -signal.SIGKILL), err[-3000:]
    if code > 0:
        assert "stopped by SIGKILL (rank 1, pid" in " ".join(err.split()) and "Traceback" not in err, err[-3000:]
    # rank 0 may have written step `second`'s checkpoint before it missed rank 1
    assert torch.load(last, weights_only=True)["global_step"] in range(second - 2, second + 1), second

    code, err = two_ranks(tmp_path, killed, "--resume")
    assert code == 0, err[-3000:]
    assert same_weights(tmp_path / "a" / "run", tmp_path / "b" / "run") == [], (first, second)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_launcher_stops_both_processes_at_that_step_with_a_checkpoint(tmp_path, fashion_slice):
    """`kill PID` reaches rank 0 alone: at the step's end both processes agree to stop, rank 0 writes last.ckpt at
    that step and says how to resume, rank 1 ends quietly (the resume itself is the one the test above checks)."""
    recipe = tmp_path / "run.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, fashion_slice, *DDP_ARGS)))
    code, err = two_ranks(tmp_path, recipe, step=4, send=signal.SIGTERM)
    text = " ".join(err.split())
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "[rank" not in err, err[-3000:]
    run = tmp_path / "run"
    assert (f"stopped by SIGTERM at epoch 1, step 4; the run is saved in {run / 'checkpoints' / 'last.ckpt'}. "
            f"Continue it with `sft train {run / 'recipe.yaml'} --resume`") in text, text
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and last["RunData"] == {"epoch": 0, "batches_done": 4}
