"""The LightningModule every task's module extends: a backbone and a new head, trained by a freeze schedule.

The module always holds the whole model, so every strategy produces the same checkpoint. The checkpoint also carries
the freeze state and the RNG states, so a resumed run continues exactly where the uninterrupted one would have been
(augmentations do not draw from these states at all: see sft.data.samples.EpochSeeded).
A task adds its loss and metrics in `training_step` / `validation_step` and logs the value it monitors.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from torch import nn

from sft.recipe import Optim
from sft.training.optim import build_optimizer, build_scheduler
from sft.training.strategies import Schedule


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training stops and the last good checkpoint is kept."""


class FineTuneModule(L.LightningModule):
    def __init__(self, backbone: nn.Module, head: nn.Module, schedule: Schedule, optim: Optim, epochs: int,
                 channels_last: bool = False):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.schedule, self.optim, self.epochs, self.channels_last = schedule, optim, epochs, channels_last
        if channels_last:  # a convolutional head (a decoder, an FPN) in the layout its inputs come in
            head.to(memory_format=torch.channels_last)

    # -- the freeze schedule: applied at every epoch start and again after each validation ------------------------
    def on_train_epoch_start(self) -> None:
        self.schedule.apply(self.backbone, self.current_epoch)

    def on_train_start(self) -> None:  # a run resumed inside an epoch gets no on_train_epoch_start for it
        self.schedule.apply(self.backbone, self.current_epoch)

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self.schedule.apply(self.backbone, self.current_epoch)

    read_loss_every = 25  # steps between reads of the finite flag on a GPU
    finite: torch.Tensor | None = None  # every loss since the last read was finite (on the loss's device)

    def check_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """Stop on a NaN or infinite loss. Reading a GPU tensor waits for the device and empties the queue of work
        ahead of it, so on a GPU the flag gathers there and is read every `read_loss_every` steps, at each epoch's
        end and before each checkpoint (none holds weights a NaN passed through)."""
        finite = torch.isfinite(loss.detach())
        self.finite = finite if self.finite is None else self.finite & finite
        if loss.device.type == "cpu" or self.global_step % self.read_loss_every == 0:
            self.stop_if_not_finite()
        return loss

    def stop_if_not_finite(self) -> None:
        if self.finite is not None and not bool(self.finite):
            self.finite = None
            raise NonFiniteLoss(f"loss is NaN or infinite by epoch {self.current_epoch}, step "
                                f"{self.global_step}")

    def on_train_epoch_end(self) -> None:
        self.stop_if_not_finite()

    def training_step(self, batch, batch_idx):
        """The plain step (a task with more to log has its own): the task's `loss_fn` of the outputs against the
        batch's targets, checked finite and logged."""
        x, y = batch
        loss = self.check_finite(self.loss_fn(self(x).float(), y))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optim, self.backbone, self.head, self.schedule)
        scheduler = build_scheduler(self.optim, self.epochs, optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoint extras -------------------------------------------------------------------------------------------
    def checkpoint_facts(self) -> dict:
        """What a task stores beside the weights in every checkpoint (e.g. its class names)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.stop_if_not_finite()
        checkpoint["sft"] = {
            **self.checkpoint_facts(),
            "trainable_groups": self.schedule.trainable_groups(self.current_epoch),
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": random.getstate()},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("sft", {}).get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            kind, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
            random.setstate(rng["python"])


def _numpy_state() -> tuple:
    """NumPy's RNG state in plain types, so checkpoints load with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)
