"""The multi-label LightningModule: the new linear head of one logit per label on the backbone's pooled vector,
binary cross-entropy per label (optionally each label's positives weighed by its negatives/positives) or the
asymmetric loss, and val_map (macro average precision over the labels present in the validation split) monitored.
`TrainedMultilabel` is the finished model: its outputs are the labels' sigmoid probabilities, so evaluation,
predictions, the ONNX graph and the server all give them."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MultilabelAveragePrecision

from sft.data.splits import Splits
from sft.models.backbone import Backbone
from sft.tasks.multilabel.data import label_counts
from sft.tasks.multilabel.recipe import MultilabelOptim, MultilabelRecipe
from sft.tasks.pooled import new_head, pooled_outputs
from sft.training.module import FineTuneModule
from sft.training.strategies import Schedule

MAX_POS_WEIGHT = 100.0


def positive_weights(targets: np.ndarray) -> torch.Tensor:
    """Each label's negatives/positives on the training split (pos_weight: auto), within [1/100, 100]; a label
    without positives gets 1."""
    pos = label_counts(targets).astype(np.float64)
    neg = len(targets) - pos
    ratio = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return torch.as_tensor(np.clip(ratio, 1 / MAX_POS_WEIGHT, MAX_POS_WEIGHT), dtype=torch.float32)


class AsymmetricLoss(nn.Module):
    """ASL (Ridnik et al. 2021): focal terms with separate strengths for positives and negatives, and the negatives'
    probabilities shifted down by `clip` (easy negatives cost nothing); a mean over samples and labels."""

    def __init__(self, gamma_neg: float, gamma_pos: float, clip: float):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        q = (p - self.clip).clamp(min=0) if self.clip else p  # the negatives' shifted probability
        pos = y * F.logsigmoid(logits) * (1 - p).pow(self.gamma_pos)
        neg = (1 - y) * torch.log((1 - q).clamp(min=1e-8)) * q.pow(self.gamma_neg)
        return -(pos + neg).mean()


def build_loss(optim: MultilabelOptim, train_targets: np.ndarray) -> nn.Module:
    if optim.loss == "asymmetric":
        return AsymmetricLoss(optim.gamma_neg, optim.gamma_pos, optim.clip)
    weight = positive_weights(train_targets) if optim.pos_weight == "auto" else None
    return nn.BCEWithLogitsLoss(pos_weight=weight)


def present_mean(ap: torch.Tensor) -> torch.Tensor:
    """The mean AP over the labels with a positive: torchmetrics gives a label without one an AP of 0 (its recall
    undefined), and one with a positive always scores above 0, so the mask is exact."""
    present = ap > 0
    return ap[present].mean() if bool(present.any()) else ap.new_zeros(())


class MultilabelClassifier(FineTuneModule):
    def __init__(self, backbone: Backbone, splits: Splits, schedule: Schedule, recipe: MultilabelRecipe,
                 channels_last: bool = False):
        names = splits.train.classes
        super().__init__(backbone.module, new_head(backbone.num_features, len(names), recipe.model.dropout),
                         schedule, recipe.optim, recipe.trainer.epochs, channels_last)
        self.facts = {"classes": names}
        self.loss_fn = build_loss(recipe.optim, splits.train.targets)
        self.val_ap = MultilabelAveragePrecision(len(names), average=None, thresholds=None)

    def forward(self, x: torch.Tensor | dict) -> torch.Tensor:
        """The head's outputs: one logit per label."""
        return pooled_outputs(self.backbone, self.head, x, self.channels_last)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x).float()
        self.val_ap.update(torch.sigmoid(logits), y.long())
        self.log("val_loss", self.loss_fn(logits, y), prog_bar=True, sync_dist=True, batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        with warnings.catch_warnings():  # a label absent from the split: excluded below
            warnings.filterwarnings("ignore", message=".*No positive samples.*")
            ap = self.val_ap.compute()
        self.val_ap.reset()
        self.log("val_map", present_mean(ap), prog_bar=True)

    def checkpoint_facts(self) -> dict:
        """A resumed run must predict the same labels in the same order."""
        return self.facts


class TrainedMultilabel(nn.Module):
    """backbone -> head -> sigmoid: each label's probability, for evaluation, prediction and export (of images,
    tokenized texts or cached features)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, channels_last: bool = False):
        super().__init__()
        self.backbone, self.head, self.channels_last = backbone, head, channels_last

    def forward(self, x: torch.Tensor | dict) -> torch.Tensor:
        return torch.sigmoid(pooled_outputs(self.backbone, self.head, x, self.channels_last).float())
