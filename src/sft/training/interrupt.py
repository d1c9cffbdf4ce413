"""Ctrl-C (SIGINT) or SIGTERM while a run trains: finish the current batch, write checkpoints/last.ckpt at that step
and stop with 128 + the signal's number, saying how to resume.

The checkpoint is the same kind as the periodic mid-epoch ones (weights, optimizer, schedule, RNG states, the
epoch's position in the data), so `sft train RECIPE --resume` continues exactly where the run stopped. A second
signal, or one before or after training, stops at once with what is on disk.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from lightning.pytorch.callbacks import Callback

from sft.core.rundir import RunDir
from sft.errors import Interrupted

log = logging.getLogger("sft")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal(Callback):
    def __init__(self, run: RunDir):
        self.run, self.signum, self.training, self.saving = run, None, False, False

    @contextlib.contextmanager
    def installed(self):
        """Our handlers for the whole of training (Lightning composes its own SIGTERM handler with them)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.saving:  # the checkpoint being written is finished first
            return
        if self.training and self.signum is None:
            self.signum = signum
            log.warning(f"{signal.Signals(signum).name}: finishing this batch and writing {self.run.last_checkpoint}"
                        f" (send it again to stop at once)")
            return
        raise Interrupted(self.message(signum, saved=False), signum)

    def message(self, signum: int, saved: bool, where: str = "") -> str:
        name = signal.Signals(signum).name
        if saved:
            return (f"stopped by {name}{where}; the run is saved in {self.run.last_checkpoint}. Continue it with "
                    f"`sft train RECIPE --resume` (the same recipe and overrides, run_dir={self.run.path})")
        if self.run.last_checkpoint.exists():
            return (f"stopped by {name}; {self.run.last_checkpoint} holds the latest checkpoint. Continue with "
                    f"`sft train RECIPE --resume` (the same recipe and overrides, run_dir={self.run.path})")
        return f"stopped by {name} before the first checkpoint; nothing to resume: train again"

    def on_train_start(self, trainer, module) -> None:
        self.training = True

    def on_train_end(self, trainer, module) -> None:
        self.training = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not trainer.fit_loop.epoch_loop._should_accumulate():  # accumulated gradients are in no checkpoint
            self._stop_if_asked(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        self._stop_if_asked(trainer)  # a signal during validation: the epoch is complete, saved as such

    def _stop_if_asked(self, trainer) -> None:
        if self.signum is None:
            return
        self.saving = True
        trainer.save_checkpoint(self.run.last_checkpoint)
        self.saving = self.training = False
        where = f" at epoch {trainer.current_epoch + 1}, step {trainer.global_step}"
        raise Interrupted(self.message(self.signum, saved=True, where=where), self.signum)
