"""Read labelled images from the formats people actually have (class folders, CSV, IDX, numpy).

Every source becomes one `Samples`: either pixels in memory or file paths, so the rest of the
toolkit never cares where data came from. Bad input is reported once, at load, as a UserError
naming the file (and CSV line) rather than failing mid-training.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sft.errors import UserError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FORMATS = ("folder", "csv", "idx", "numpy")


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
    """Labelled samples from one source: images (pixels in memory or file paths) or texts (strings, or
    (text, text) pairs), as `kind` says."""
    items: np.ndarray | list
    labels: np.ndarray
    classes: list[str]
    ids: list[str]
    kind: str = "image"

    def __post_init__(self):
        if not (len(self.items) == len(self.labels) == len(self.ids)):
            raise ValueError(f"Samples: {len(self.items)} items, {len(self.labels)} labels, {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.labels)

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
        return Samples(items, self.labels[idx], list(self.classes), [self.ids[i] for i in idx], self.kind)

    def fingerprint(self) -> str:
        """Key for cached features: changes with the pixels or files, not with labels."""
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
        for path in self.items:
            try:
                st = os.stat(path)
            except OSError as e:
                raise UserError(f"{path}: cannot read image file ({e.strerror})") from None
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


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
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
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
