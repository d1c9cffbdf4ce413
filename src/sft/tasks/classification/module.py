"""The classification LightningModule: the new head on the backbone's pooled vector, cross-entropy or focal loss
(class-weighted when asked), accuracy monitored as val_acc. It trains on inputs or, in head-only epochs, on cached
features: `logits` takes either."""

from __future__ import annotations

import numpy as np
import torch
import torchmetrics
from torch import nn

from sft.data.splits import Splits
from sft.errors import UserError
from sft.models.backbone import Backbone
from sft.tasks.classification.losses import FocalLoss, class_weights
from sft.tasks.classification.recipe import ClassificationRecipe
from sft.tasks.pooled import new_head
from sft.tasks.pooled import pooled_outputs as logits
from sft.training.module import FineTuneModule
from sft.training.strategies import Schedule


def build_loss(recipe: ClassificationRecipe, train) -> nn.Module:
    """Cross-entropy or focal loss, with class weights when data.balance is class-weights."""
    weight = (class_weights(train.labels, train.classes, recipe.data.class_weights)
              if recipe.data.balance == "class-weights" else None)
    if recipe.optim.loss == "focal":
        return FocalLoss(recipe.optim.focal_gamma, weight=weight, label_smoothing=recipe.optim.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.optim.label_smoothing)


class Classifier(FineTuneModule):
    def __init__(self, backbone: Backbone, splits: Splits, schedule: Schedule, recipe: ClassificationRecipe,
                 channels_last: bool = False):
        classes = splits.classes
        present = sorted({classes[i] for i in np.unique(splits.train.labels)})
        if len(present) < 2:  # before torchmetrics refuses num_classes=1 from deep inside
            raise UserError(f"data.train ({recipe.data.train.path}): the training samples are of one class only "
                            f"({present or classes}); a classifier needs samples of at least two classes")
        super().__init__(backbone.module, new_head(backbone.num_features, len(classes), recipe.model.dropout),
                         schedule, recipe.optim, recipe.trainer.epochs, channels_last)
        self.classes = classes
        self.loss_fn = build_loss(recipe, splits.train)
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=len(classes))
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=len(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.backbone, self.head, x, self.channels_last)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        loss = self.check_finite(self.loss_fn(out.float(), y))
        self.train_acc(out, y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.val_acc(out, y)
        self.log("val_loss", self.loss_fn(out.float(), y), prog_bar=True, sync_dist=True, batch_size=len(y))
        self.log("val_acc", self.val_acc, prog_bar=True, batch_size=len(y))

    def checkpoint_facts(self) -> dict:
        return {"classes": self.classes}
