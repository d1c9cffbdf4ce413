"""Loaders for one run: seeded samplers, and cached backbone features in head-only epochs.

The data order is a function of (seed, epoch) alone, so a resumed run sees the same batches as an uninterrupted one,
on one process or several. Every checkpoint records how many batches of its epoch were trained (the data module's
state in Lightning's checkpoint), so a run resumed from the middle of an epoch continues with the next batch.
A loader lives as long as its phase (head-only on features, or whole inputs): its worker processes persist across
epochs, and each index carries its epoch to them so that augmentations still follow (seed, epoch, sample).
A UserError raised in a worker (an image that cannot be decoded) reaches the user as its one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset

from sft.data.samples import EpochSeeded, Samples
from sft.data.sampling import SAMPLER_MODES, BalancedSampler, ResumableBatches
from sft.data.splits import Splits
from sft.errors import UserError


class WorkerError(UserError):
    """A UserError raised in a DataLoader worker. PyTorch re-raises a worker's exception in the main process as
    `type(e)("Caught ... Original Traceback ... <type>: <message>")`; this type keeps the message alone."""

    def __init__(self, message: str):
        marker = f"{WorkerError.__module__}.{WorkerError.__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.partition(marker)[2].rstrip()
        super().__init__(message)


def worker_safe(error: UserError) -> WorkerError:
    """`error` as a WorkerError, to raise where a loader worker may run (a dataset's __getitem__)."""
    return error if isinstance(error, WorkerError) else WorkerError(str(error))


@dataclass
class Inputs:
    """How a task turns samples into model inputs: a dataset per split kind and the batch collate."""
    train: Callable[[Samples], Dataset]
    eval: Callable[[Samples], Dataset]
    collate: Callable | None
    key: str  # what features depend on besides weights and data: the transform or the tokenizer settings
    lengths: Callable[[Samples], np.ndarray] | None = None  # texts: tokens per sample, before truncation
    decodes: bool = True  # each item is decoded and transformed (images): worth loader worker processes


class AtEpoch(Sampler):
    """`sampler`'s indices as (epoch, index): the epoch reaches the dataset in worker processes that outlive it."""

    def __init__(self, sampler: Sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochItems(Dataset):
    """dataset[(epoch, i)]: item i with that epoch's augmentations (an EpochSeeded dataset, in whichever process)."""

    def __init__(self, dataset: EpochSeeded):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        self.dataset.epoch, index = key
        try:
            return self.dataset[index]
        except UserError as e:
            raise worker_safe(e) from None


class RunData(L.LightningDataModule):
    """Loaders for one run. In head-only epochs they serve cached backbone features instead of images or texts."""

    def __init__(self, splits: Splits, inputs: Inputs, *, batch_size: int, num_workers: int, seed: int,
                 head_only: Callable[[int], bool], features: Callable[[str, Dataset], torch.Tensor],
                 balance: str = "none", lengths: np.ndarray | None = None, pin_memory: bool = False):
        """lengths: the training samples' token counts, to draw training batches of similar length (texts).
        pin_memory: page-locked batches, copied to a GPU while it computes."""
        super().__init__()
        self.splits, self.batch_size, self.num_workers, self.seed = splits, batch_size, num_workers, seed
        self.pin_memory = pin_memory
        self.kept: dict[tuple[str, bool], tuple[DataLoader, Sampler]] = {}  # (split, head-only): a phase's loader
        self.balance, self.collate, self.lengths = balance, inputs.collate, lengths
        self.train_set = inputs.train(splits.train)
        self.eval_sets = {name: inputs.eval(samples)
                          for name, samples in (("train", splits.train), ("val", splits.val), ("test", splits.test))
                          if samples is not None}
        self.head_only, self.features = head_only, features
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches trained) of the checkpoint resumed from

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the epoch and how many of its training batches are done."""
        if self.trainer is None:
            return {}
        return {"epoch": self.trainer.current_epoch,
                "batches_done": self.trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" in state:
            self.resume_at = (int(state["epoch"]), int(state["batches_done"]))

    def eval_dataset(self, split: str, cached: bool) -> Dataset:
        """A split in eval transform: (features, target) from the cache when `cached`, else (input, target)."""
        if not cached:
            return self.eval_sets[split]
        return TensorDataset(self.features(split, self.eval_sets[split]), getattr(self.splits, split).target_tensor())

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _loader(self, dataset: Dataset, shuffle: bool, balanced: bool = False,
                lengths: np.ndarray | None = None, skip: int = 0) -> tuple[DataLoader, Sampler]:
        """The one place a sampler is chosen. Each draws its order from (seed, epoch) and gives every process a
        disjoint share: class-balanced epochs, batches grouped by length (lengths given), or plain shuffling."""
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if balanced:
            sampler = BalancedSampler(self.splits.train.labels, self.balance, num_replicas=world, rank=rank,
                                      seed=self.seed)
        elif lengths is not None:  # Hugging Face's group_by_length: shuffled mega-batches, each sorted by length
            from transformers.trainer_pt_utils import DistributedLengthGroupedSampler
            sampler = DistributedLengthGroupedSampler(self.batch_size, num_replicas=world, rank=rank, seed=self.seed,
                                                      lengths=lengths.tolist())
        else:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)
        if isinstance(dataset, EpochSeeded):  # its augmentations: a function of (seed, epoch, sample)
            dataset.seed, sampler, dataset = self.seed, AtEpoch(sampler), EpochItems(dataset)
        cached = isinstance(dataset, TensorDataset)  # features, in memory
        workers = 0 if cached else self.num_workers
        # its own generator: creating the iterator draws the workers' base seed from it, not from the global RNG
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._epoch())
        batches = ({"batch_sampler": ResumableBatches(sampler, self.batch_size, skip)} if skip else
                   {"batch_size": self.batch_size, "sampler": sampler})  # the same batches, all of them
        loader = DataLoader(dataset, **batches, num_workers=workers, collate_fn=None if cached else self.collate,
                            generator=generator, pin_memory=self.pin_memory,
                            persistent_workers=workers > 0 and not skip)
        return loader, sampler

    def _phase_loader(self, split: str, cached: bool, **choice) -> DataLoader:
        """The split's loader for this phase, built once (a resumed epoch's, which skips batches, only for that
        epoch), its sampler set to the epoch."""
        if choice.get("skip"):
            loader, sampler = self._loader(**choice)
        else:
            if (split, cached) not in self.kept:
                self.kept[split, cached] = self._loader(**choice)
            loader, sampler = self.kept[split, cached]
        sampler.set_epoch(self._epoch())
        return loader

    def train_dataloader(self) -> DataLoader:
        head_only = self.head_only(self._epoch())
        dataset = self.eval_dataset("train", cached=True) if head_only else self.train_set
        # the batches trained before a resume: every loader of that epoch skips them (Lightning may build one before
        # it restores the epoch counter, and another when the epoch starts)
        if self.resume_at and self.resume_at[0] < self._epoch():
            self.resume_at = None
        skip = self.resume_at[1] if self.resume_at and self.resume_at[0] == self._epoch() else 0
        return self._phase_loader("train", head_only, dataset=dataset, shuffle=True,
                                  balanced=self.balance in SAMPLER_MODES,
                                  lengths=None if head_only else self.lengths, skip=skip)  # features: no padding

    def val_dataloader(self) -> DataLoader:
        cached = self.head_only(self._epoch())
        return self._phase_loader("val", cached, dataset=self.eval_dataset("val", cached=cached), shuffle=False)


def eval_batches(dataset: Dataset, batch_size: int, collate_fn: Callable | None, progress: bool, what: str):
    """A split in order, batch by batch, with a transient progress bar when `progress`."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    if progress:
        from rich.progress import track  # deferred: only interactive commands draw progress
        return track(loader, description=what, transient=True)
    return loader
