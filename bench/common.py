"""Shared by the benchmarks: real Fashion-MNIST slices written as .npz sources, and the JSON last line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
OUT = Path(__file__).parent / "out"


def read_fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The official split: 'train' (60k) or 't10k' (10k), as uint8 (N,28,28) images and int64 labels."""
    with gzip.open(FASHION / f"{split}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / f"{split}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def fashion_npz(split: str, n: int | None, seed: int = 0) -> Path:
    """A stratified slice of n samples of an official split, as an .npz sft can read (all of it when n is None)."""
    from sft.data.samples import stratified_subset

    x, y = read_fashion(split)
    if n is not None:
        idx = stratified_subset(y, n, seed)
        x, y = x[idx], y[idx]
    OUT.mkdir(exist_ok=True)
    path = OUT / f"fashion_{split}_{n or 'all'}_{seed}.npz"
    if not path.exists():
        np.savez(path, x=x, y=y)
    return path


def report(figures: dict) -> None:
    """Print the figures, then one line of JSON holding them (the line the docs quote)."""
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    print(json.dumps(figures))
