"""Classification losses for imbalanced data: class weights (inverse frequency, effective number) and a focal loss.

`data.balance: class-weights` reweights the loss; `oversample` / `undersample` (sft.data.sampling) change what an
epoch contains instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sft.data.sampling import class_counts
from sft.errors import UserError

WEIGHT_SPECS = ("inverse", "auto", "effective")


def class_weights(labels: np.ndarray, classes: list[str], spec: str | dict[str, float]) -> torch.Tensor:
    """Per-class loss weights, float32 (C,).

    "inverse" (alias "auto"): n / (C * count_c), the weighting that makes every class count as much in the loss.
    "effective": Cui et al. (CVPR 2019), w_c = (1 - beta) / (1 - beta**count_c). We fix beta = 1 - 1/n (n = number
    of samples) so there is no knob to tune: the effective number then grows almost linearly for small classes and
    saturates for classes near n, i.e. weights sit between uniform and inverse frequency.
    Both are scaled to mean 1 over the classes that have samples; a class with no samples gets 0 (it cannot occur
    as a target, and must not inflate the others). A dict {class name: weight} is taken as given; classes it does
    not name get 1.0.
    """
    counts = class_counts(labels, len(classes))
    if isinstance(spec, dict):
        unknown = [name for name in spec if name not in classes]
        if unknown:
            raise UserError(f"class weights name unknown classes {unknown}: expected names from {list(classes)}")
        try:
            given = {name: float(w) for name, w in spec.items()}
        except (TypeError, ValueError):
            raise UserError(f"class weights must be numbers, got {spec}") from None
        bad = {name: w for name, w in given.items() if not w >= 0 or math.isinf(w)}
        if bad:
            raise UserError(f"class weights must be finite and >= 0, got {bad}")
        weights = np.array([given.get(name, 1.0) for name in classes], dtype=np.float64)
        if not (weights[counts > 0] > 0).any():
            raise UserError(f"class weights {spec} give every class with samples weight 0: the loss would be 0/0")
        return torch.tensor(weights, dtype=torch.float32)
    if spec not in WEIGHT_SPECS:
        raise UserError(f"unknown class weights {spec!r}: expected one of {list(WEIGHT_SPECS)} "
                        "or a mapping {class name: weight}")
    n = int(counts.sum())
    if n == 0:
        raise UserError("cannot compute class weights: there are no labels")
    present = counts > 0
    weights = np.zeros(len(classes), dtype=np.float64)
    if spec == "effective":
        beta = 1.0 - 1.0 / n
        weights[present] = (1.0 - beta) / (1.0 - beta ** counts[present])  # n == 1: beta 0, all weights 1
    else:
        weights[present] = n / (len(classes) * counts[present])
    weights[present] /= weights[present].mean()
    return torch.tensor(weights, dtype=torch.float32)


class FocalLoss(nn.Module):
    """Multi-class softmax focal loss (Lin et al. 2017): down-weights easy examples.

    Per sample: sum_c q_c * w_c * (1 - p_c)**gamma * -log p_c, with q the (label-smoothed) target distribution;
    the batch mean divides by sum_i w_{y_i}, as nn.CrossEntropyLoss does. So gamma = 0 *is* cross-entropy, and class
    weights and label smoothing mean the same thing with and without focusing.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if not gamma >= 0:
            raise UserError(f"focal loss gamma must be >= 0, got {gamma}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise UserError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # at least float32, like cross_entropy under autocast: log-probabilities in half precision are too coarse
        logp = F.log_softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
        num_classes = logp.shape[1]
        weight = torch.ones(num_classes, dtype=logp.dtype, device=logp.device) if self.weight is None \
            else self.weight.to(logp.dtype)
        per_class = -logp * weight  # (N, C)
        if self.gamma:
            # 1 - p via expm1 stays accurate near p = 1; the clamp keeps the gradient finite there when gamma < 1
            focus = (-torch.expm1(logp)).clamp_min(torch.finfo(logp.dtype).tiny).pow(self.gamma)
            per_class = per_class * focus
        eps = self.label_smoothing
        per_sample = (1 - eps) * per_class.gather(1, target[:, None]).squeeze(1)
        if eps:
            per_sample = per_sample + eps / num_classes * per_class.sum(1)
        return per_sample.sum() / weight[target].sum()
