"""Imbalanced data: a class-balanced sampler that works across processes (the loss side is the task's).

`data.balance: oversample` / `undersample` change what an epoch contains.
PyTorch has no distributed weighted sampler (pytorch issue 77154): `WeightedRandomSampler` draws from the global RNG
and knows nothing of ranks, so each process would see its own, overlapping, unrepeatable epoch. `BalancedSampler`
draws the epoch from (seed, epoch) alone, so every process computes the same list and takes a disjoint share of it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import torch

from sft.errors import UserError

SAMPLER_MODES = ("oversample", "undersample")  # data.balance modes that draw the batches with their own sampler


def class_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Samples per class, int64 (n,); a label outside 0..n-1 is a data error, not something to count silently."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    bad = labels[(labels < 0) | (labels >= n)]
    if bad.size:
        raise UserError(f"labels {sorted(set(bad.tolist()))[:10]} are out of range: expected 0..{n - 1} "
                        f"for {n} classes")
    return np.bincount(labels, minlength=n).astype(np.int64)


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


class ResumableBatches(torch.utils.data.BatchSampler):
    """The batches of `sampler`, the first `skip` of them not drawn: the epoch a run was interrupted in continues
    after the batches it had trained on, as the uninterrupted run would. The samplers draw the whole epoch from
    (seed, epoch), so skipping whole batches leaves every later batch as it was. `len` is the full epoch's, as
    Lightning counts the batches it restored."""

    def __init__(self, sampler, batch_size: int, skip: int = 0):
        super().__init__(sampler, batch_size, drop_last=False)
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(super().__iter__(), self.skip, None)  # a loader serves one epoch: every time
