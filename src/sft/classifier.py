"""Classification, of images or texts: backbone + new head as a LightningModule, trained on inputs or cached features.

The module always holds the whole model, so every strategy produces the same checkpoint and `eval`/`predict` work on
images whatever the run trained on. The checkpoint also carries the freeze state and the RNG states, so a resumed
run continues exactly where the uninterrupted one would have been.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
import torchmetrics
from torch import nn

from sft.optim import build_optimizer, build_scheduler
from sft.recipe import Recipe
from sft.strategies import Schedule


def new_head(num_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The replaced final layer: the same shape in training and when a run's model is rebuilt."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))


def logits(backbone: nn.Module, head: nn.Module, x: torch.Tensor | dict, channels_last: bool) -> torch.Tensor:
    """Logits from images (B,3,H,W), tokenized texts (a dict) or cached features (B,D)."""
    if isinstance(x, dict):
        x = backbone(x)
    elif x.ndim == 4:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = backbone(x)
    return head(x)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training stops and the last good checkpoint is kept."""


class Classifier(L.LightningModule):
    def __init__(self, backbone: nn.Module, num_features: int, classes: list[str], schedule: Schedule,
                 recipe: Recipe, channels_last: bool = False, loss_fn: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = new_head(num_features, len(classes), recipe.model.dropout)
        self.classes, self.schedule, self.recipe, self.channels_last = classes, schedule, recipe, channels_last
        self.loss_fn = loss_fn or nn.CrossEntropyLoss(label_smoothing=recipe.optim.label_smoothing)
        n = len(classes)
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=n)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.backbone, self.head, x, self.channels_last)

    # -- the freeze schedule: applied at every epoch start and again after each validation ------------------------
    def on_train_epoch_start(self) -> None:
        self.schedule.apply(self.backbone, self.current_epoch)

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self.schedule.apply(self.backbone, self.current_epoch)

    # -- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}")
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", self.loss_fn(logits.float(), y), prog_bar=True, sync_dist=True, batch_size=len(y))
        self.log("val_acc", self.val_acc, prog_bar=True, batch_size=len(y))

    def configure_optimizers(self):
        optimizer = build_optimizer(self.recipe.optim, self.backbone, self.head, self.schedule)
        scheduler = build_scheduler(self.recipe, optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoint extras -------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sft"] = {
            "classes": self.classes,
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
