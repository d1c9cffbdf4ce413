"""The training loaders: one per phase with persistent workers, and augmentations that still follow the epoch."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from sft.data.loaders import Inputs, RunData
from sft.data.samples import EpochSeeded, Samples
from sft.data.splits import Splits


class Noisy(EpochSeeded, Dataset):
    """An 'augmentation' that is nothing but a random draw: it shows which (seed, epoch, sample) made it."""

    def __init__(self, samples: Samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        with self.seeded(i):
            return torch.rand(4), int(self.samples.labels[i])


def run_data(workers: int, head_only=lambda epoch: False) -> RunData:
    def samples(n: int) -> Samples:
        return Samples(np.zeros((n, 2, 2), np.uint8), np.arange(n) % 2, ["a", "b"], [str(i) for i in range(n)])

    features = {"train": torch.randn(24, 3), "val": torch.randn(8, 3)}
    data = RunData(Splits(samples(24), samples(8), None), Inputs(Noisy, Noisy, None, key=""), batch_size=8,
                   num_workers=workers, seed=3, head_only=head_only, features=lambda split, _: features[split])
    data.trainer = SimpleNamespace(current_epoch=0, world_size=1, global_rank=0)
    return data


def epoch_batches(data: RunData, epoch: int):
    data.trainer.current_epoch = epoch
    loader = data.train_dataloader()
    return loader, [x for x, _ in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_one_loader_per_phase_whose_augmentations_follow_the_epoch(workers):
    data, reference = run_data(workers), run_data(0)
    first, epoch0 = epoch_batches(data, 0)
    again, epoch1 = epoch_batches(data, 1)
    assert again is first and first.persistent_workers == (workers > 0)  # workers live across the epochs
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))  # each epoch draws its own augmentations
    for epoch, batches in ((0, epoch0), (1, epoch1)):  # the same batches as in the training process itself
        assert all(torch.equal(a, b) for a, b in zip(batches, epoch_batches(reference, epoch)[1]))


def test_a_phase_change_builds_the_next_phases_loader():
    data = run_data(0, head_only=lambda epoch: epoch < 1)
    cached, batches = epoch_batches(data, 0)
    assert batches[0].shape == (8, 3)  # the cached features
    full, batches = epoch_batches(data, 1)
    assert full is not cached and batches[0].shape == (8, 4)
