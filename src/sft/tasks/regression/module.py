"""The regression LightningModule: the new linear head on the backbone's pooled vector, one output per target column,
trained on the standardised targets (z-scores: the loss is the same whatever the targets' units) with Huber, MSE or
L1, and val_mae monitored in the targets' own units. `TrainedRegressor` is the finished model: its outputs are scaled
back to those units, so evaluation, predictions, the ONNX graph and the server all give them."""

from __future__ import annotations

import torch
import torchmetrics
from torch import nn

from sft.data.splits import Splits
from sft.models.backbone import Backbone
from sft.recipe import Optim
from sft.tasks.pooled import new_head, pooled_outputs
from sft.tasks.regression.data import standardization
from sft.tasks.regression.recipe import RegressionRecipe
from sft.training.module import FineTuneModule
from sft.training.strategies import Schedule


def build_loss(optim: Optim) -> nn.Module:
    """Huber (delta in the standardised units the head trains in), MSE or L1, averaged over samples and columns."""
    if optim.loss == "huber":
        return nn.HuberLoss(delta=optim.huber_delta)
    return nn.L1Loss() if optim.loss == "l1" else nn.MSELoss()


class Scaled(nn.Module):
    """Holds the targets' mean and std (buffers: they follow the model to its device, and are no weights)."""

    def init_scaling(self, mean, std) -> None:
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32), persistent=False)

    def unscaled(self, z: torch.Tensor) -> torch.Tensor:
        """Head outputs (z-scores) in the targets' own units."""
        return z.float() * self.std + self.mean


class Regressor(Scaled, FineTuneModule):
    def __init__(self, backbone: Backbone, splits: Splits, schedule: Schedule, recipe: RegressionRecipe,
                 channels_last: bool = False):
        names = splits.train.classes
        mean, std = standardization(splits.train.targets, names, recipe.data.standardize,
                                    f"data.train ({recipe.data.train.path})")
        super().__init__(backbone.module, new_head(backbone.num_features, len(names), recipe.model.dropout),
                         schedule, recipe.optim, recipe.trainer.epochs, channels_last)
        self.init_scaling(mean, std)
        self.facts = {"target_columns": names, "target_mean": mean, "target_std": std}
        self.loss_fn = build_loss(recipe.optim)
        self.val_mae = torchmetrics.MeanAbsoluteError()

    def forward(self, x: torch.Tensor | dict) -> torch.Tensor:
        """The head's outputs: standardised targets."""
        return pooled_outputs(self.backbone, self.head, x, self.channels_last)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.check_finite(self.loss_fn(self(x).float(), (y - self.mean) / self.std))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        z = self(x).float()
        self.val_mae(self.unscaled(z), y)
        self.log("val_loss", self.loss_fn(z, (y - self.mean) / self.std), prog_bar=True, sync_dist=True,
                 batch_size=len(y))
        self.log("val_mae", self.val_mae, prog_bar=True, batch_size=len(y))

    def checkpoint_facts(self) -> dict:
        """A resumed run must regress the same columns with the same scaling (the same training targets)."""
        return self.facts


class TrainedRegressor(Scaled):
    """backbone -> head -> the targets' units, for evaluation, prediction and export (of images, tokenized texts or
    cached features)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mean, std, channels_last: bool = False):
        super().__init__()
        self.backbone, self.head, self.channels_last = backbone, head, channels_last
        self.init_scaling(mean, std)

    def forward(self, x: torch.Tensor | dict) -> torch.Tensor:
        return self.unscaled(pooled_outputs(self.backbone, self.head, x, self.channels_last))
