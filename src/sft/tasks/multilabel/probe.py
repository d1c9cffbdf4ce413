"""The converged linear start of a multi-label head: one-vs-rest logistic regression on the cached features, fitted
by full-batch L-BFGS for each L2 strength on a path from strong to weak (warm-started), the one with the best
validation macro mAP kept (the multi-label twin of classification's probe; binary cross-entropy separates over the
labels, so the joint fit is C independent logistic regressions sharing the strength)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sft.models.backbone import load_linear
from sft.tasks.multilabel.metrics import average_precisions
from sft.training.probe import L2_PATH, fit_l2_path



@dataclass
class OneVsRestFit:
    weight: torch.Tensor  # (labels, features)
    bias: torch.Tensor  # (labels,)
    l2: float
    val_map: float
    seconds: float

    def facts(self) -> dict:
        return {"l2": self.l2, "val_map": round(self.val_map, 4), "seconds": round(self.seconds, 2)}


def fit_one_vs_rest(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                    pos_weight: torch.Tensor | None = None, l2_path=L2_PATH, max_iter: int = 100,
                    patience: int = 2) -> OneVsRestFit:
    """Logistic regressions of each column of `train_y` (N, C) 0/1 on `train_x` (N, D) (mean BCE per sample +
    l2/2 |W|^2), the path stopping after `patience` strengths without gain on validation macro mAP. Deterministic
    (CPU)."""
    x, y = train_x.to("cpu", torch.float32).clone(), train_y.to("cpu", torch.float32)  # clone: cached features may
    vx, vy = val_x.to("cpu", torch.float32), val_y.to("cpu", torch.float32)              # be inference tensors
    fit = fit_l2_path(x, y.shape[1], lambda logits: F.binary_cross_entropy_with_logits(
        logits, y, pos_weight=pos_weight, reduction="sum") / len(x),
        lambda linear: average_precisions(torch.sigmoid(linear(vx)), vy)["macro"] or 0.0, l2_path, max_iter, patience)
    return OneVsRestFit(fit.weight, fit.bias, fit.l2, fit.score, fit.seconds)


def load_one_vs_rest(head: nn.Module, fit: OneVsRestFit) -> None:
    """Put the fit's weights into the head's last nn.Linear."""
    load_linear(head, fit.weight, fit.bias)
