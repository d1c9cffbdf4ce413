"""Imbalanced data: class weights for the loss, a focal loss, and a class-balanced sampler that works across processes.

`data.balance: class-weights` reweights the loss; `oversample` / `undersample` change what an epoch contains instead.
PyTorch has no distributed weighted sampler (pytorch issue 77154): `WeightedRandomSampler` draws from the global RNG
and knows nothing of ranks, so each process would see its own, overlapping, unrepeatable epoch. `BalancedSampler`
draws the epoch from (seed, epoch) alone, so every process computes the same list and takes a disjoint share of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sft.errors import UserError

WEIGHT_SPECS = ("inverse", "auto", "effective")
SAMPLER_MODES = ("oversample", "undersample")


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Samples per class, int64 (C,); a label outside 0..C-1 is a data error, not something to count silently."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise UserError(f"labels {sorted(set(bad.tolist()))[:10]} are out of range: expected 0..{num_classes - 1} "
                        f"for {num_classes} classes")
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


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


class BalancedSampler(torch.utils.data.Sampler[int]):
    """A class-balanced epoch drawn from (seed, epoch) and split disjointly across processes.

    oversample: every class contributes max_count indices (all its samples plus draws with replacement).
    undersample: every class contributes min_count indices, drawn without replacement, fresh each epoch.
    Classes without samples are left out. The list is shuffled, padded to a multiple of num_replicas by repeating
    its beginning (as DistributedSampler does) and rank r takes positions r::num_replicas. Only a torch.Generator
    seeded with seed + epoch is used, never the global RNG, so all ranks and a resumed run agree.
    """

    def __init__(self, labels: np.ndarray, mode: str, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        if mode not in SAMPLER_MODES:
            raise UserError(f"unknown balanced sampling mode {mode!r}: expected one of {list(SAMPLER_MODES)}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if labels.size == 0:
            raise UserError(f"cannot {mode}: there are no labels")
        counts = class_counts(labels, int(labels.max()) + 1)
        order = np.argsort(labels, kind="stable")  # indices grouped by class, ascending within each
        self.by_class = [group for group in np.split(order, np.cumsum(counts)[:-1]) if group.size]
        sizes = [group.size for group in self.by_class]
        self.per_class = max(sizes) if mode == "oversample" else min(sizes)
        self.mode, self.num_replicas, self.rank, self.seed, self.epoch = mode, num_replicas, rank, seed, 0
        self.total = self.per_class * len(self.by_class)
        self.num_samples = math.ceil(self.total / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this every epoch; without it every epoch would repeat the same draw."""
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        """The whole epoch's draw, before padding and the split (for tests and logs)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        parts = []
        for group in self.by_class:
            if self.mode == "oversample":
                extra = torch.randint(group.size, (self.per_class - group.size,), generator=g).numpy()
                parts += [group, group[extra]]
            else:
                parts.append(group[torch.randperm(group.size, generator=g)[: self.per_class].numpy()])
        drawn = np.concatenate(parts)
        return drawn[torch.randperm(drawn.size, generator=g).numpy()]

    def __iter__(self) -> Iterator[int]:
        # np.resize repeats the list from its start, even when padding needs more than one copy
        padded = np.resize(self.epoch_indices(), self.num_samples * self.num_replicas)
        return iter(padded[self.rank:: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
