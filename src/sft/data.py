"""From the recipe's data section to loaders: splits, the backbone's own transforms, seeded samplers, cached features.

Transforms default to the backbone's pretrained convention (input size, mean/std, interpolation, crop): feeding
un-normalised pixels, as the seed's example does, wastes the pretraining. The data order is a function of
(seed, epoch) alone, so a resumed run sees the same batches as an uninterrupted one, on one process or several.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from sft.backbones import Preprocess
from sft.balance import BalancedSampler
from sft.errors import UserError
from sft.recipe import SAMPLED_BALANCE, Data, Source
from sft.sources import Samples, read_samples, stratified_split, stratified_subset


@dataclass
class Inputs:
    """How a task turns samples into model inputs: a dataset per split kind and the batch collate."""
    train: Callable[[Samples], Dataset]
    eval: Callable[[Samples], Dataset]
    collate: Callable | None
    key: str  # what features depend on besides weights and data: the transform or the tokenizer settings
    lengths: Callable[[Samples], np.ndarray] | None = None  # texts: tokens per sample, before truncation


@dataclass
class Splits:
    train: Samples
    val: Samples
    test: Samples | None

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def read_source(source: Source, classes: list[str] | None) -> Samples:
    return read_samples(source.path, labels=source.labels, format=source.format, classes=classes)


Reader = Callable[[Source, "list[str] | None"], Samples]


def load_splits(cfg: Data, seed: int, read: Reader = read_source) -> Splits:
    """Read train/val/test; limit them; hold out a stratified validation share of train when no val set is given."""
    train = read(cfg.train, cfg.classes)
    classes = cfg.classes or train.classes
    val = read(cfg.val, classes) if cfg.val is not None else None
    if cfg.exclude or cfg.relabel:
        excluded, relabels = read_corrections(cfg, [train] + ([val] if val else []))
        train = curate(train, excluded, relabels, "data.train")
        val = curate(val, excluded, relabels, "data.val") if val else None
    if cfg.train_limit:  # before the split, so the held-out validation share comes out of the limited set
        train = train.subset(stratified_subset(train.labels, cfg.train_limit, seed))
    if val is None:
        counts = np.bincount(train.labels, minlength=len(train.classes))
        rare = [c for c, n in zip(train.classes, counts) if n == 1]
        if rare:
            raise UserError(f"data.train: class(es) {rare[:10]} have a single sample, too few to hold out a "
                            f"validation share; add samples, give data.val, or drop the class")
        train_idx, val_idx = stratified_split(train.labels, cfg.val_fraction, seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    test = read(cfg.test, classes) if cfg.test is not None else None
    for name, split in (("val", val), ("test", test)):
        if split is not None and split.classes != train.classes:
            extra = sorted(set(split.classes) - set(train.classes))
            missing = sorted(set(train.classes) - set(split.classes))
            raise UserError(f"data.{name}: classes differ from data.train (only in {name}: {extra}; "
                            f"only in train: {missing}); set data.classes to fix the list")
    if cfg.val_limit:
        val = val.subset(stratified_subset(val.labels, cfg.val_limit, seed))
    if test is not None and cfg.test_limit:
        test = test.subset(stratified_subset(test.labels, cfg.test_limit, seed))
    if len(train) == 0 or len(val) == 0:
        raise UserError("data: the training or validation split is empty")
    return Splits(train, val, test)


def read_corrections(cfg: Data, sources: list[Samples]) -> tuple[set[str], dict[str, str]]:
    """data.exclude and data.relabel (e.g. from `sft audit`); every listed sample must exist in train or val."""
    from sft.audit import read_relabels, read_sample_list
    excluded = set(read_sample_list(Path(cfg.exclude))) if cfg.exclude else set()
    relabels = read_relabels(Path(cfg.relabel)) if cfg.relabel else {}
    known = {sample for source in sources for sample in source.ids}
    for path, listed in ((cfg.exclude, excluded), (cfg.relabel, relabels)):
        unknown = sorted(set(listed) - known)
        if unknown:
            raise UserError(f"{path}: {len(unknown)} of {len(listed)} listed samples are not in data.train or "
                            f"data.val, e.g. {unknown[:3]}")
    classes = sources[0].classes
    wrong = sorted({label for label in relabels.values() if label not in classes})
    if wrong:
        raise UserError(f"{cfg.relabel}: labels {wrong} are not classes of the data ({classes})")
    return excluded, relabels


def curate(samples: Samples, excluded: set[str], relabels: dict[str, str], name: str) -> Samples:
    """The samples without the excluded ones and with corrected labels (the test split is never edited)."""
    if not (excluded or relabels):
        return samples
    labels = samples.labels.copy()
    for i, sample in enumerate(samples.ids):
        if sample in relabels:
            labels[i] = samples.classes.index(relabels[sample])
    keep = np.array([i for i, sample in enumerate(samples.ids) if sample not in excluded], dtype=np.int64)
    curated = Samples(samples.items, labels, samples.classes, samples.ids, samples.kind).subset(keep)
    emptied = [c for i, c in enumerate(curated.classes)
               if (samples.labels == i).any() and not (curated.labels == i).any()]
    if emptied:
        raise UserError(f"{name}: no samples of class(es) {emptied} remain after data.exclude")
    return curated


def build_transforms(pre: Preprocess, image_size: int | None, augment: str) -> tuple[Callable, Callable]:
    """(train, eval) transforms from timm's factory, in the backbone's own convention."""
    size = (image_size, image_size) if image_size else pre.input_size
    common = dict(input_size=(3, *size), mean=pre.mean, std=pre.std, interpolation=pre.interpolation)
    eval_tf = create_transform(**common, is_training=False, crop_pct=pre.crop_pct)
    if augment == "none":
        return eval_tf, eval_tf
    if augment == "light":
        train_tf = create_transform(**common, is_training=True, scale=(0.6, 1.0), hflip=0.5, color_jitter=0.0)
    else:
        train_tf = create_transform(**common, is_training=True, scale=(0.25, 1.0), hflip=0.5, color_jitter=0.3,
                                    auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    return train_tf, eval_tf


class ImageDataset(Dataset):
    def __init__(self, samples: Samples, transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.transform(self.samples.image(i)), int(self.samples.labels[i])


class RunData(L.LightningDataModule):
    """Loaders for one run. In head-only epochs they serve cached backbone features instead of images or texts."""

    def __init__(self, splits: Splits, inputs: Inputs, *, batch_size: int, num_workers: int, seed: int,
                 head_only: Callable[[int], bool], features: Callable[[str, Dataset], torch.Tensor],
                 balance: str = "none", lengths: np.ndarray | None = None):
        """lengths: the training samples' token counts, to draw training batches of similar length (texts)."""
        super().__init__()
        self.splits, self.batch_size, self.num_workers, self.seed = splits, batch_size, num_workers, seed
        self.balance, self.collate, self.lengths = balance, inputs.collate, lengths
        self.train_set = inputs.train(splits.train)
        self.eval_sets = {name: inputs.eval(samples)
                          for name, samples in (("train", splits.train), ("val", splits.val), ("test", splits.test))
                          if samples is not None}
        self.head_only, self.features = head_only, features

    def eval_dataset(self, split: str, cached: bool) -> Dataset:
        """A split in eval transform: (features, label) from the cache when `cached`, else (image, label)."""
        if not cached:
            return self.eval_sets[split]
        labels = torch.as_tensor(getattr(self.splits, split).labels, dtype=torch.long)
        return TensorDataset(self.features(split, self.eval_sets[split]), labels)

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _loader(self, dataset: Dataset, shuffle: bool, balanced: bool = False,
                lengths: np.ndarray | None = None) -> DataLoader:
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
        cached = isinstance(dataset, TensorDataset)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=0 if cached else
                          self.num_workers, collate_fn=None if cached else self.collate)

    def train_dataloader(self) -> DataLoader:
        head_only = self.head_only(self._epoch())
        dataset = self.eval_dataset("train", cached=True) if head_only else self.train_set
        return self._loader(dataset, shuffle=True, balanced=self.balance in SAMPLED_BALANCE,
                            lengths=None if head_only else self.lengths)  # cached features have no padding

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("val", cached=self.head_only(self._epoch())), shuffle=False)
