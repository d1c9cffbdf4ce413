"""A linear probe trained to convergence on cached features: full-batch L-BFGS, the L2 strength chosen on validation.

A few epochs of minibatch AdamW leave a new head under-trained (scikit-learn's LogisticRegression on the same frozen
features scored 4-11 points higher), and the head is the seed's core method. Because the features are cached, the
exact problem is cheap: a regularisation path from strong to weak L2, each fit warm-started from the previous one,
keeping the weights that score best on the validation split. Runs whose first epochs are head-only start from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sft.models.backbone import last_linear, load_linear
from sft.training.probe import L2_PATH, fit_l2_path



@dataclass
class ProbeFit:
    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor  # (classes,)
    l2: float
    val_acc: float
    seconds: float

    def facts(self) -> dict:
        return {"l2": self.l2, "val_acc": round(self.val_acc, 4), "seconds": round(self.seconds, 2)}


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, classes: int,
              class_weight: torch.Tensor | None = None, l2_path=L2_PATH, max_iter: int = 100,
              patience: int = 2) -> ProbeFit:
    """Weights of a multinomial logistic regression (cross-entropy + l2/2 |W|^2) for each L2 on the path, keeping
    the best on validation; the path stops after `patience` strengths without gain. Deterministic (CPU)."""
    x, y = train_x.to("cpu", torch.float32).clone(), train_y.to("cpu", torch.long)  # clone: cached features may
    vx, vy = val_x.to("cpu", torch.float32), val_y.to("cpu", torch.long)              # be inference tensors
    weight = None if class_weight is None else class_weight.detach().to("cpu", torch.float32)
    fit = fit_l2_path(x, classes, lambda logits: F.cross_entropy(logits, y, weight=weight),
                      lambda linear: (linear(vx).argmax(1) == vy).double().mean().item(), l2_path, max_iter, patience)
    return ProbeFit(fit.weight, fit.bias, fit.l2, fit.score, fit.seconds)


def load_probe(head: nn.Module, fit: ProbeFit) -> None:
    """Put the probe's weights into the head's last nn.Linear."""
    if last_linear(head) is None:
        raise ValueError("the head has no nn.Linear layer")
    load_linear(head, fit.weight, fit.bias)
