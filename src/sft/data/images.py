"""Labelled images from the formats people actually have (class folders, CSV, IDX, numpy), the backbone's own
transforms, and the dataset that applies them.

Bad input is reported once, at load, as a UserError naming the file (and CSV line) rather than failing mid-training.
Transforms default to the backbone's pretrained convention (input size, mean/std, interpolation, crop): feeding
un-normalised pixels, as the seed's example does, wastes the pretraining.
"""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset

from sft.data.loaders import worker_safe
from sft.data.samples import IMAGE_EXTS, EpochSeeded, Samples
from sft.errors import UserError
from sft.models.backbone import Preprocess

FORMATS = ("folder", "csv", "idx", "numpy")


def read_samples(path, *, labels=None, format="auto", classes=None) -> Samples:
    """Load a labelled image source; `format="auto"` guesses from the path."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data file or folder not found")
    if format == "auto":
        format = _guess_format(path)
    if format not in FORMATS:
        raise UserError(f"{path}: unknown format {format!r}; expected one of auto, {', '.join(FORMATS)}")
    classes = None if classes is None else [str(c) for c in classes]
    if classes is not None and len(set(classes)) != len(classes):
        raise UserError(f"{path}: the classes given contain duplicates: {classes}")
    if format in ("folder", "csv") and labels is not None:
        raise UserError(f"{path}: labels= is only for idx and numpy sources; {format} sources carry their own labels")
    if format == "folder":
        return _read_folder(path, classes)
    if format == "csv":
        return _read_csv(path, classes)
    if format == "idx":
        return _read_idx(path, labels, classes)
    return _read_numpy(path, labels, classes)


def _guess_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "folder"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".npz", ".npy")):
        return "numpy"
    if "idx3-ubyte" in name or name.endswith((".idx", ".idx.gz")):
        return "idx"
    raise UserError(f"{path}: cannot tell the data format from the name; supported: a folder of class "
                    "subfolders, *.csv, *.npz / *.npy, IDX files (*idx3-ubyte[.gz], *.idx[.gz])")


def _verify_image(path: str) -> str | None:
    """Cheap integrity check (header + structure, no full decode); returns an error or None."""
    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except Exception as e:  # PIL raises many types for corrupt files
        return f"{type(e).__name__}: {e}"


def _label_index(name: str, index: dict[str, int], where: str) -> int:
    if name not in index:
        raise UserError(f"{where}: label {name!r} is not one of the classes {list(index)}")
    return index[name]


def _read_folder(root: Path, classes: list[str] | None) -> Samples:
    if not root.is_dir():
        raise UserError(f"{root}: expected a folder with one subfolder per class")
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise UserError(f"{root}: no class subfolders found; expected e.g. {root}/<class>/<image>.png")
    classes = classes if classes is not None else names
    index, paths, labels = {c: i for i, c in enumerate(classes)}, [], []
    for name in names:
        label = _label_index(name, index, str(root / name))
        found, seen = [], set()
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:  # os.walk follows a link back up the tree until paths are too long
                raise UserError(f"{dirpath}: a symbolic link leads back to {os.path.realpath(dirpath)}, already "
                                f"read (a loop, or the same images twice); remove the link")
            seen.add((st.st_dev, st.st_ino))
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [os.path.join(dirpath, f) for f in filenames
                      if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTS]
        if not found:
            raise UserError(f"{root / name}: class folder has no images ({', '.join(sorted(IMAGE_EXTS))})")
        paths += sorted(os.path.abspath(p) for p in found)
        labels += [label] * len(found)
    for p in paths:  # ~50 us per file; a thread pool was slower (GIL)
        if err := _verify_image(p):
            raise UserError(f"{p}: not a readable image ({err})")
    return Samples(paths, np.array(labels, dtype=np.int64), list(classes), list(paths))


def _read_csv(path: Path, classes: list[str] | None) -> Samples:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read CSV ({e})") from None
    path_col = next((c for c in ("path", "image", "file") if c in header), None)
    missing = ([] if path_col else ["'path' (or 'image' / 'file')"]) + ([] if "label" in header else ["'label'"])
    if missing:
        raise UserError(f"{path}: missing column {' and '.join(missing)}; the header has columns {header}")
    pi, li = header.index(path_col), header.index("label")
    paths, names, lines = [], [], []
    for line, row in rows:
        rel, name = (row[i].strip() if i < len(row) else "" for i in (pi, li))
        if not rel:
            raise UserError(f"{path} line {line}: empty {path_col!r}")
        if not name:
            raise UserError(f"{path} line {line}: empty label")
        p = os.path.abspath(path.parent / rel)  # an absolute cell wins over base
        if not os.path.isfile(p):
            raise UserError(f"{path} line {line}: image file not found: {p}")
        paths.append(p), names.append(name), lines.append(line)
    if not paths:
        raise UserError(f"{path}: no data rows after the header")
    for p, line in zip(paths, lines):
        if err := _verify_image(p):
            raise UserError(f"{path} line {line}: not a readable image: {p} ({err})")
    classes = classes if classes is not None else sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    labels = [_label_index(n, index, f"{path} line {line}") for n, line in zip(names, lines)]
    return Samples(paths, np.array(labels, dtype=np.int64), list(classes), list(paths))


def _read_idx_file(path: Path, magic: int, what: str) -> np.ndarray:
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read IDX {what} file ({e})") from None
    ndim = 3 if magic == 2051 else 1
    head = 4 + 4 * ndim
    got = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if got != magic or len(data) < head:
        raise UserError(f"{path}: not an IDX {what} file (magic number {got}, expected {magic})")
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    if len(data) - head != int(np.prod(shape)):
        raise UserError(f"{path}: IDX {what} file holds {len(data) - head} bytes of data, "
                        f"expected {int(np.prod(shape))} for shape {shape} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(shape).copy()


def _read_idx(path: Path, labels, classes: list[str] | None) -> Samples:
    if labels is None and "images-idx3" not in path.name:
        raise UserError(f"{path}: cannot derive the IDX labels file name; pass labels=")
    labels = Path(labels or path.with_name(path.name.replace("images-idx3", "labels-idx1")))
    if not labels.is_file():
        raise UserError(f"{labels}: IDX labels file not found (for images {path})")
    x = _read_idx_file(path, 2051, "images")
    y = _read_idx_file(labels, 2049, "labels")
    if len(x) != len(y):
        raise UserError(f"{labels}: {len(y)} labels but {path} has {len(x)} images")
    return _array_samples(path, x, y.astype(np.int64), classes, labels)


def _read_numpy(path: Path, labels, classes: list[str] | None) -> Samples:
    def load(p: Path, want_npz: bool):
        try:
            a = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"{p}: cannot read numpy file ({e})") from None
        if isinstance(a, np.ndarray) == want_npz:
            raise UserError(f"{p}: expected {'an .npz archive' if want_npz else 'a single .npy array'}")
        return a

    if path.suffix.lower() == ".npz":
        if labels is not None:
            raise UserError(f"{path}: labels= is only for .npy images; an .npz holds its own labels")
        with load(path, True) as z:
            keys = list(z.files)
            pair = next((k for k in (("x", "y"), ("images", "labels")) if set(k) <= set(keys)), None)
            if pair is None:
                raise UserError(f"{path}: expected keys 'x' and 'y' (or 'images' and 'labels'); found {keys}")
            x, y = z[pair[0]], z[pair[1]]
        ysrc = f"{path} key {pair[1]!r}"
    else:
        if labels is None:
            raise UserError(f"{path}: a .npy holds only images; pass labels= another .npy of integer labels")
        x, y, ysrc = load(path, False), load(Path(labels), False), str(labels)
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3))):
        raise UserError(f"{path}: images have shape {x.shape}; expected (N, H, W) or (N, H, W, C) with C 1 or 3")
    if x.dtype.kind == "f":
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise UserError(f"{path}: float images must lie in [0, 1] (got {x.min()}..{x.max()})")
        x = np.round(x * 255).astype(np.uint8)
    elif x.dtype.kind in "iu" and x.dtype != np.uint8:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise UserError(f"{path}: integer images must lie in 0..255 (got {x.min()}..{x.max()})")
        x = x.astype(np.uint8)
    elif x.dtype != np.uint8:
        raise UserError(f"{path}: images have dtype {x.dtype}; expected uint8 or float in [0, 1]")
    if y.dtype.kind not in "iu" or y.shape != (len(x),) or (y.size and y.min() < 0):
        raise UserError(f"{ysrc}: labels have shape {y.shape} dtype {y.dtype}; "
                        f"expected integers >= 0 of shape ({len(x)},)")
    return _array_samples(path, np.ascontiguousarray(x), y.astype(np.int64), classes, ysrc)


def _array_samples(path: Path, x: np.ndarray, y: np.ndarray, classes, ysrc) -> Samples:
    top = int(y.max()) if len(y) else -1
    if classes is None:
        classes = [str(i) for i in range(top + 1)]
    elif len(classes) <= top:
        raise UserError(f"{ysrc}: label {top} has no name; {len(classes)} classes given {classes}")
    return Samples(x, y, list(classes), [f"{path}#{i}" for i in range(len(y))])



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


class ImageDataset(EpochSeeded, Dataset):
    def __init__(self, samples: Samples, transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        try:
            image = self.samples.image(i)
        except UserError as e:  # also read by the feature cache's loader workers
            raise worker_safe(e) from None
        with self.seeded(i):
            return self.transform(image), self.samples.target(i)
