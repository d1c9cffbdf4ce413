"""A linear probe trained to convergence on cached features: full-batch L-BFGS along a path of L2 strengths, from
strong to weak, each fit warm-started from the previous one, the weights that score best on the validation split
kept. A few epochs of minibatch AdamW leave a new head under-trained, and because the features are cached the exact
problem is cheap. Each task gives its loss (classification's cross-entropy, multi-label's per-label binary
cross-entropy) and its validation score (accuracy, macro mAP)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

L2_PATH = tuple(10.0 ** -(k / 2) for k in range(2, 13))  # 1e-1 ... 1e-6, half-decades, strong to weak


@dataclass
class PathFit:
    weight: torch.Tensor  # (outputs, features)
    bias: torch.Tensor  # (outputs,)
    l2: float
    score: float  # on the validation split, higher is better
    seconds: float


def fit_l2_path(x: torch.Tensor, outputs: int, loss: Callable[[torch.Tensor], torch.Tensor],
                score: Callable[[nn.Linear], float], l2_path=L2_PATH, max_iter: int = 100,
                patience: int = 2) -> PathFit:
    """A linear layer (features x (N, D) -> `outputs`) minimising `loss(logits)` + l2/2 |W|^2 for each L2 on the
    path, keeping the best `score(linear)`; the path stops after `patience` strengths without gain. Deterministic on
    the CPU (x float32 on the CPU)."""
    started = time.perf_counter()
    linear = nn.Linear(x.shape[1], outputs)
    nn.init.zeros_(linear.weight), nn.init.zeros_(linear.bias)
    best, since_best = None, 0
    for l2 in l2_path:
        optimizer = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=max_iter, history_size=20,
                                      tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            value = loss(linear(x)) + 0.5 * l2 * linear.weight.pow(2).sum()
            value.backward()
            return value

        optimizer.step(closure)
        with torch.no_grad():
            value = score(linear)
        if best is None or value > best.score:
            best = PathFit(linear.weight.detach().clone(), linear.bias.detach().clone(), l2, value, 0.0)
            since_best = 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    best.seconds = time.perf_counter() - started
    return best
