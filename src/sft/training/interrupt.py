"""Ctrl-C (SIGINT) or SIGTERM while a run trains: finish the current step (all its batches, under gradient
accumulation), write checkpoints/last.ckpt there and stop with 128 + the signal's number, saying how to resume.

The checkpoint is the same kind as the periodic mid-epoch ones (weights, optimizer, schedule, RNG states, the
epoch's position in the data), so `sft train RUN_DIR/recipe.yaml --resume` continues exactly where the run stopped.
A second signal, or one before or after training, stops at once with what is on disk. Loader workers ignore the
signals (Ctrl-C in a terminal reaches them too): the training process shuts them down as it stops.

With DDP (processes Lightning launches itself) every process handles the signals, and at each step's end they
agree whether any got one, so all of them stop after the same step, whichever the signal reached (Ctrl-C reaches
all, `kill PID` the launcher alone). A process that dies takes the others down with it: a rank whose launcher is
killed gets SIGKILL from the kernel instead of waiting in a collective, and a launcher whose rank was killed says so
and points at the latest checkpoint instead of relaying gloo's connection error.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading

import torch
from lightning.pytorch.callbacks import Callback

from sft.core.rundir import RunDir, is_child_process
from sft.errors import Interrupted
from sft.training.trainer import optimizer_stepped

log = logging.getLogger("sft")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
VOTE_EVERY = 25  # steps between the DDP processes' votes on stopping, on a GPU (every step on the CPU)


class StopOnSignal(Callback):
    def __init__(self, run: RunDir):
        self.run, self.signum, self.training, self.saving, self.trainer = run, None, False, False, None
        self.handling, self.pid = False, os.getpid()

    @contextlib.contextmanager
    def installed(self):
        """Our handlers for the whole of training, in every process of the run."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.pid = os.getpid()
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        self.handling = True
        try:
            yield
        finally:
            self.handling = False
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # a loader worker (forked with this handler): the training process stops it
            return
        if self.saving:  # the checkpoint being written is finished first
            return
        if self.training and self.signum is None:
            self.signum = signum
            if not is_child_process():  # one line for the run, not one per process
                log.warning(f"{signal.Signals(signum).name}: finishing this batch and writing "
                            f"{self.run.last_checkpoint} (send it again to stop at once)")
            return
        raise Interrupted(self.message(signum, saved=False), signum)

    def message(self, signum: int, saved: bool, where: str = "") -> str:
        name = signal.Signals(signum).name
        # the run's own recipe.yaml (written before the first step) holds the recipe and overrides as they ran
        resume = f"`sft train {shlex.quote(str(self.run.recipe))} --resume`"
        if saved:
            return (f"stopped by {name}{where}; the run is saved in {self.run.last_checkpoint}. Continue it with "
                    f"{resume}")
        if self.run.last_checkpoint.exists():
            return (f"stopped by {name}{where}; {self.run.last_checkpoint} holds the latest checkpoint. Continue with "
                    f"{resume}")
        return f"stopped by {name}{where} before the first checkpoint; nothing to resume: train again"

    def ended_process(self) -> Interrupted | None:
        """When another DDP process of this run was killed (the error training raised is then gloo's or NCCL's
        lost connection): the error saying which one, and how to resume."""
        launcher = self.trainer.strategy.launcher if self.trainer is not None else None
        for rank, proc in enumerate(getattr(launcher, "procs", ()), start=1):  # the ranks this process launched
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)  # its socket closes a moment before its exit status is there
            if proc.returncode is not None and proc.returncode < 0:
                signum = -proc.returncode
                return Interrupted(self.message(signum, saved=False, where=f" (rank {rank}, pid {proc.pid})"), signum)
        return None

    def on_train_start(self, trainer, module) -> None:
        self.training, self.trainer = True, trainer
        # SIGTERM is ours alone from here: the handler Lightning put in front of ours broadcasts to the other DDP
        # processes from inside the handler, wherever each one is; our vote at the step's end stops them together
        if self.handling:
            signal.signal(signal.SIGTERM, self._handle)

    def on_train_end(self, trainer, module) -> None:
        self.training = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not optimizer_stepped(trainer, batch_idx):  # accumulated gradients are in no checkpoint
            return
        # DDP on a GPU: reading the vote waits for the device, so the processes vote every VOTE_EVERY steps there
        every = VOTE_EVERY if trainer.world_size > 1 and trainer.strategy.root_device.type != "cpu" else 1
        if trainer.global_step % every == 0:
            self._stop_if_asked(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        self._stop_if_asked(trainer)  # a signal during validation: the epoch is complete, saved as such

    def _stop_if_asked(self, trainer) -> None:
        signum = self.signum or 0
        if trainer.world_size > 1:  # DDP: every process stops at this step if any of them got a signal
            vote = torch.tensor(signum, device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(vote, reduce_op="max"))
        if not signum:
            return
        self.saving = True
        trainer.save_checkpoint(self.run.last_checkpoint, weights_only=False)  # all of it, by rank 0: the others wait
        self.saving = self.training = False
        if trainer.global_rank != 0:  # rank 0 says how to resume; a failed rank would have Lightning kill rank 0
            raise SystemExit(0)
        where = f" at epoch {trainer.current_epoch + 1}, step {trainer.global_step}"
        raise Interrupted(self.message(signum, saved=True, where=where), signum)


def die_with_launcher() -> None:
    """In a DDP rank Lightning launched: ask Linux for SIGKILL when the launching process dies, so a killed `sft
    train` leaves no rank behind (one blocked in a collective would otherwise wait for its timeout)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
