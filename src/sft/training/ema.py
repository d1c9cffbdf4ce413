"""`trainer.ema`: an exponential moving average of the weights, through Lightning's weight-averaging callback.

Validation scores the average, and the average is what every checkpoint holds as the model: best.ckpt (weights only,
which Lightning writes without the callbacks' checkpoint hooks) through `BestCheckpoint`, last.ckpt through the
callback's own hook, which keeps the raw weights beside it so a resumed run continues both exactly. The decay warms
up as TensorFlow's moving average does, min(decay, (1 + n) / (10 + n)) after n steps, so a short run's average is not
stuck at its first steps.
"""

from __future__ import annotations

import contextlib

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging


class EMA(WeightAveraging):
    """The average of the whole module after every optimizer step (parameters and buffers)."""

    def __init__(self, decay: float) -> None:
        super().__init__(use_buffers=True, multi_avg_fn=self._update)
        self.decay = decay
        self._now = 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        steps = trainer.global_step
        self._now = min(self.decay, (1 + steps) / (10 + steps))
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)

    def _update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _count) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - self._now)
        else:  # counters (BatchNorm's num_batches_tracked) follow the model
            torch._foreach_copy_(averaged, current)

    @contextlib.contextmanager
    def averaged(self, module):
        """The module holds the average inside the block, its own weights again after it."""
        if self._average_model is None:
            yield
            return
        self._swap_models(module)
        try:
            yield
        finally:
            self._swap_models(module)


class BestCheckpoint(ModelCheckpoint):
    """A weights-only checkpoint of the weights validation scored: the average's when an EMA callback runs."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
        with ema.averaged(trainer.lightning_module) if ema else contextlib.nullcontext():
            super()._save_checkpoint(trainer, filepath)
