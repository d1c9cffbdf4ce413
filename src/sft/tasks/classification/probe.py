"""A linear probe trained to convergence on cached features: full-batch L-BFGS, the L2 strength chosen on validation.

A few epochs of minibatch AdamW leave a new head under-trained (scikit-learn's LogisticRegression on the same frozen
features scored 4-11 points higher), and the head is the seed's core method. Because the features are cached, the
exact problem is cheap: a regularisation path from strong to weak L2, each fit warm-started from the previous one,
keeping the weights that score best on the validation split. Runs whose first epochs are head-only start from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sft.models.backbone import last_linear

L2_PATH = tuple(10.0 ** -(k / 2) for k in range(2, 13))  # 1e-1 ... 1e-6, half-decades, strong to weak


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
    started = time.perf_counter()
    x, y = train_x.to("cpu", torch.float32).clone(), train_y.to("cpu", torch.long)  # clone: cached features may
    vx, vy = val_x.to("cpu", torch.float32), val_y.to("cpu", torch.long)              # be inference tensors
    weight = None if class_weight is None else class_weight.detach().to("cpu", torch.float32)
    linear = nn.Linear(x.shape[1], classes)
    nn.init.zeros_(linear.weight), nn.init.zeros_(linear.bias)
    best, since_best = None, 0
    for l2 in l2_path:
        optimizer = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=max_iter, history_size=20,
                                      tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(linear(x), y, weight=weight) + 0.5 * l2 * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            acc = (linear(vx).argmax(1) == vy).double().mean().item()
        if best is None or acc > best.val_acc:
            best = ProbeFit(linear.weight.detach().clone(), linear.bias.detach().clone(), l2, acc, 0.0)
            since_best = 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    best.seconds = time.perf_counter() - started
    return best


def load_probe(head: nn.Module, fit: ProbeFit) -> None:
    """Put the probe's weights into the head's last nn.Linear."""
    linear = last_linear(head)
    if linear is None:
        raise ValueError("the head has no nn.Linear layer")
    with torch.no_grad():
        linear.weight.copy_(fit.weight.to(linear.weight))
        linear.bias.copy_(fit.bias.to(linear.bias))
