"""The converged linear start of a regression head: ridge regression on the cached features, its penalty chosen on
the validation split (the regression twin of classification's L-BFGS probe).

Ridge has a closed form, so the probe is exact rather than a few epochs of SGD: one SVD of the centred training
features X = U S Vᵀ gives every penalty's weights, W(λ) = V diag(s / (s² + λ)) Uᵀ y, for a path of λ relative to the
largest s² (scale-free: the features' units do not matter), and the one with the lowest validation MAE is kept. It
fits the standardised targets the head trains on; runs whose first epochs are head-only start from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from sft.models.backbone import load_linear

PENALTIES = tuple(10.0 ** -(k / 2) for k in range(0, 17))  # times the largest squared singular value: 1 ... 1e-8


@dataclass
class RidgeFit:
    weight: torch.Tensor  # (outputs, features)
    bias: torch.Tensor  # (outputs,)
    penalty: float  # relative to the largest squared singular value of the centred features
    val_mae: float  # in the units it was fitted in (standard deviations when standardised)
    seconds: float

    def facts(self) -> dict:
        return {"ridge_penalty": self.penalty, "val_mae": round(self.val_mae, 4), "seconds": round(self.seconds, 2)}


def fit_ridge(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
              penalties=PENALTIES) -> RidgeFit:
    """Ridge weights (with an unpenalised intercept) of `train_y` (N, K) on `train_x` (N, D) for each penalty, the
    best on the validation split kept. Deterministic, in float64 on the CPU."""
    started = time.perf_counter()
    x, y = train_x.to("cpu", torch.float64), train_y.to("cpu", torch.float64)  # cached features may be inference
    vx, vy = val_x.to("cpu", torch.float64), val_y.to("cpu", torch.float64)    # tensors: these are copies
    x_mean, y_mean = x.mean(0), y.mean(0)
    u, s, vh = torch.linalg.svd(x - x_mean, full_matrices=False)
    uty = u.T @ (y - y_mean)
    best, largest = None, max(float(s[0]) ** 2, 1e-12) if len(s) else 1.0
    for relative in penalties:
        weight = vh.T @ ((s / (s * s + relative * largest))[:, None] * uty)  # (D, K)
        bias = y_mean - x_mean @ weight
        mae = float((vx @ weight + bias - vy).abs().mean())
        if best is None or mae < best.val_mae:
            best = RidgeFit(weight.T.float().contiguous(), bias.float(), relative, mae, 0.0)
    best.seconds = time.perf_counter() - started
    return best


def load_ridge(head: nn.Module, fit: RidgeFit) -> None:
    """Put the ridge weights into the head's last nn.Linear."""
    load_linear(head, fit.weight, fit.bias)
