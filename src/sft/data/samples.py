"""`Samples`: one split's samples, whatever they are (pixels in memory, image files, texts, image and mask pairs,
conversations), so the rest of the toolkit never cares where data came from; and the seeded, stratified ways to
split and subsample them (by class where samples have one, a plain seeded draw where they do not)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sft.errors import UserError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_image(path: str | Path) -> Image.Image:
    """One image file as RGB; a missing or corrupt file is a UserError naming it."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt files
        raise UserError(f"{path}: cannot decode image ({e})") from None


@dataclass
class Samples:
    """Samples from one source: images (pixels in memory or file paths), texts (strings, or (text, text) pairs) or
    a task's own items, as `kind` says. `labels`: each sample's class index, or None where a sample has no single
    class (masks, boxes, conversations, inputs to predict). `targets`: each sample's numbers (N, K) float32 where a
    task regresses them (`classes` then names the K columns), else None."""
    items: np.ndarray | list
    labels: np.ndarray | None
    classes: list[str]
    ids: list[str]
    kind: str = "image"
    targets: np.ndarray | None = field(default=None, kw_only=True)  # keyword: subclasses add positional fields

    def __post_init__(self):
        if not len(self.items) == len(self.ids) == (len(self.ids) if self.labels is None else len(self.labels)):
            raise ValueError(f"Samples: {len(self.items)} items, {len(self.ids)} ids and "
                             f"{'no' if self.labels is None else len(self.labels)} labels")
        if self.targets is not None and len(self.targets) != len(self.ids):
            raise ValueError(f"Samples: {len(self.ids)} ids and {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.ids)

    def holdout(self, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train_idx, val_idx): a seeded `fraction` held out, stratified on the classes or the target bins, or by
        iterative stratification for label sets (several 0/1 target columns: multi-label)."""
        t = self.targets
        if self.labels is None and t is not None and t.ndim == 2 and t.shape[1] > 1 and np.isin(t, (0, 1)).all():
            return label_set_split(t, fraction, seed)
        return stratified_split(self.strata(), fraction, seed)

    def strata(self) -> np.ndarray:
        """What splits and subsets keep the proportions of: the classes, quantile bins of the first target column
        (numbers: up to 10 bins of at least 20 samples), or one stratum for unlabelled samples."""
        if self.labels is not None:
            return self.labels
        if self.targets is not None and len(self):
            ranks = np.argsort(np.argsort(self.targets[:, 0], kind="stable"), kind="stable")
            return (ranks * max(1, min(10, len(self) // 20)) // len(self)).astype(np.int64)
        return np.zeros(len(self), np.int64)

    def target(self, i: int):
        """What a model learns of sample i: its class index, or its numbers (a float32 tensor of K)."""
        return int(self.labels[i]) if self.targets is None else torch.from_numpy(self.targets[i])

    def target_tensor(self) -> torch.Tensor:
        """Every sample's target: class indices (N,) int64, or numbers (N, K) float32."""
        if self.targets is not None:
            return torch.as_tensor(self.targets, dtype=torch.float32)
        return torch.as_tensor(self.labels, dtype=torch.long)

    def image(self, i: int) -> Image.Image:
        """Sample i as an RGB image, because every model downstream expects three channels."""
        if isinstance(self.items, np.ndarray):
            arr = self.items[i]
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            return Image.fromarray(arr).convert("RGB")
        return read_image(self.items[i])

    def text(self, i: int) -> str:
        """Sample i of a text source as one string (a pair joined by a tab)."""
        item = self.items[i]
        return "\t".join(item) if isinstance(item, tuple) else item

    def subset(self, indices) -> "Samples":
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        items = self.items[idx] if isinstance(self.items, np.ndarray) else [self.items[i] for i in idx]
        labels = None if self.labels is None else self.labels[idx]
        targets = None if self.targets is None else self.targets[idx]
        return Samples(items, labels, list(self.classes), [self.ids[i] for i in idx], self.kind, targets=targets)

    def fingerprint(self) -> str:
        """Key for cached features and for "the same data": changes with the pixels or files (read now, so a file
        rewritten since shows), not with labels."""
        h = hashlib.sha256()
        if self.kind == "text":
            for item in self.items:
                h.update(repr(item).encode() + b"\n")
            return h.hexdigest()
        if isinstance(self.items, np.ndarray):
            h.update(f"array {self.items.shape} {self.items.dtype}\n".encode())
            h.update(np.ascontiguousarray(self.items))
            return h.hexdigest()
        h.update(b"files\n")
        for item in self.items:
            for path in item if isinstance(item, tuple) else (item,):  # a sample may be several files (image, mask)
                try:
                    st = os.stat(path)
                except OSError as e:
                    raise UserError(f"{path}: cannot read file ({e.strerror})") from None
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def batch_targets(targets: list) -> torch.Tensor:
    """A batch's targets as one tensor: class indices (B,) int64, or numbers (B, K) float32."""
    if targets and isinstance(targets[0], torch.Tensor):
        return torch.stack(targets)
    return torch.tensor(targets, dtype=torch.long)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): about `fraction` of every class to val, so small classes are not lost."""
    if not 0 <= fraction < 1:
        raise UserError(f"validation fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(int(round(fraction * len(idx))), len(idx) - 1)  # each class keeps >= 1 in train
        val.append(idx[:k]), train.append(idx[k:])
    empty = np.zeros(0, np.int64)
    return np.sort(np.concatenate([empty, *train])), np.sort(np.concatenate([empty, *val]))


def label_set_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) of multi-hot label sets (N, C): about `fraction` of every label's positives to val, by
    iterative stratification (Sechidis et al., 2011), which keeps rare labels in both parts where stratifying on one
    label or on whole label combinations cannot. The rarest label's samples are placed first, each to the part that
    still wants the most of that label (then the most samples; then a seeded coin). Written here because the one
    packaged implementation (iterstrat) installs a top-level `tests` package that shadows the user's own."""
    if not 0 < fraction < 1:
        raise UserError(f"validation fraction must be in (0, 1), got {fraction}")
    y = np.asarray(targets) > 0.5
    rng = np.random.default_rng(seed)
    share = np.array([1 - fraction, fraction])
    want = share[:, None] * y.sum(0)[None, :]  # (2, C): positives each part still wants
    room = share * len(y)  # samples each part still wants
    part = np.full(len(y), -1)
    left = y.copy()
    while left.any():
        counts = left.sum(0)
        label = np.flatnonzero(counts == counts[counts > 0].min())[0]
        for i in rng.permutation(np.flatnonzero(left[:, label])):
            j = _most_wanted(want[:, label], room, rng)
            part[i], left[i] = j, False
            want[j] -= y[i]
            room[j] -= 1
    for i in rng.permutation(np.flatnonzero(part < 0)):  # samples without a label
        part[i] = j = _most_wanted(room, room, rng)
        room[j] -= 1
    return np.flatnonzero(part == 0), np.flatnonzero(part == 1)


def _most_wanted(first: np.ndarray, then: np.ndarray, rng) -> int:
    best = np.flatnonzero(first == first.max())
    best = best[then[best] == then[best].max()]
    return int(best[0] if len(best) == 1 else rng.choice(best))


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n sorted indices with the class proportions of `labels` (each class >= 1 when n allows)."""
    labels = np.asarray(labels).reshape(-1)
    if n < 0:
        raise UserError(f"subset size must be >= 0, got {n}")
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    values, counts = np.unique(labels, return_counts=True)
    quota = n * counts / len(labels)
    low = 1 if n >= len(values) else 0
    alloc = np.minimum(np.maximum(np.floor(quota), low), counts).astype(np.int64)
    while alloc.sum() < n:  # largest remainder first
        alloc[np.argmax(np.where(alloc < counts, quota - alloc, -np.inf))] += 1
    while alloc.sum() > n:  # only possible after the >= 1 bump: take from the most over-served
        alloc[np.argmax(np.where(alloc > low, alloc - quota, -np.inf))] -= 1
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(values, alloc)]
    return np.sort(np.concatenate([np.zeros(0, np.int64), *picks]))


class EpochSeeded:
    """A dataset whose random transforms draw from (seed, epoch, sample index) alone, never from the process's RNG
    states: resuming, a warm or cold feature cache, the loaders created on the way, the number of processes or
    workers cannot change a sample's augmentation. The loaders set `seed` and `epoch` before each epoch."""

    seed: int = 0
    epoch: int = 0

    @contextlib.contextmanager
    def seeded(self, index: int):
        """Python, NumPy and torch (CPU) seeded for this sample; the process's own states are restored after."""
        state = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        saved = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(state)
            np.random.seed(state)
            # the CPU generator only: torch.manual_seed also queues accelerator seeding, a stack trace each call
            torch.default_generator.manual_seed(state)
            try:
                yield
            finally:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
