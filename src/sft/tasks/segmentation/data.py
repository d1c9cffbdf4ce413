"""Images with masks: a folder holding `images/` and `masks/` (paired by file name), a CSV manifest `image,mask`, a
Pascal VOC or a Cityscapes folder (sft.tasks.segmentation.layouts); masks of class indices (single-channel or palette
PNGs, read as the indices, never as colours), RGB masks mapped through `data.palette`, or ids mapped through
`data.label_map` (a lookup table: ids it does not name become the ignore index).

Every mask is read once when the split is loaded, so a missing mask, an image/mask size mismatch, values outside the
classes or an RGB mask without a palette stop the run before training, naming the file. Image and mask are
transformed together (torchvision.transforms.v2 with `tv_tensors.Mask`: nearest interpolation for masks).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from sft.core.csvfile import read_rows
from sft.data.images import IMAGE_EXTS
from sft.data.samples import EpochSeeded, Samples, read_image
from sft.errors import UserError
from sft.models.backbone import Preprocess
from sft.tasks.segmentation.layouts import LAYOUTS, cityscapes_pairs, layout, voc_pairs

MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")


def read_pairs(path: str | Path, format: str, classes: list[str], ignore_index: int,
               palette: dict[str, list[int]] | None, label_map: dict | None = None,
               split: str | None = None) -> Samples:
    """One split's (image, mask) pairs, every mask checked; `items` are (image path, mask path). `split` picks one
    of a VOC or Cityscapes root's splits (default: train; a VOC root without ImageSets: every mask)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data folder or CSV not found; sft reads {LAYOUTS}")
    kind = layout(path, format)
    if kind == "csv":
        pairs = _csv_pairs(path)
    elif kind == "voc":
        pairs = voc_pairs(path, split if split or path.is_file() or not _has_sets(path) else "train")
    elif kind == "cityscapes":
        pairs = cityscapes_pairs(path, split)
    else:
        pairs = _folder_pairs(path)
    if not pairs:
        raise UserError(f"{path}: no images; expected {path}/images/*.png|jpg with masks/ of the same names, or "
                        f"{LAYOUTS}")
    lookup = palette_lookup(palette, classes) if palette else None
    table = label_table(label_map, ignore_index)
    for image, mask in pairs:
        values = np.unique(read_mask(mask, lookup, image, table))
        bad = [int(v) for v in values if v >= len(classes) and v != ignore_index]
        if bad:
            raise UserError(f"{mask}: mask values {bad[:8]} are not classes 0..{len(classes) - 1} nor the "
                            f"ignore index {ignore_index}; set data.classes, data.ignore_index or data.label_map")
    ids = [image for image, _ in pairs]
    return Samples(pairs, None, list(classes), ids, kind="segmentation")


def check_layout(path: str | Path, format: str = "auto") -> None:
    """A UserError unless `path` is laid out as a segmentation split (a folder with images/ and masks/, a CSV
    manifest, a VOC or Cityscapes folder), saying what was found: a classification folder or an empty one is a wrong
    layout, not missing names."""
    path = Path(path)
    if not path.exists() or layout(path, format) != "folder":
        return  # read_pairs names a missing path; read_rows checks a manifest; the VOC and Cityscapes readers theirs
    expected = f"expected the subfolders images/ and masks/, or another layout sft reads: {LAYOUTS}"
    if not path.is_dir():
        raise UserError(f"{path}: is a file; {expected}")
    entries = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    folders = [p for p in entries if p.is_dir()]
    if {"images", "masks"} <= {p.name for p in folders}:
        if any(p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") for p in (path / "images").iterdir()):
            return
        found = f"no images in {path / 'images'} ({', '.join(sorted(IMAGE_EXTS))})"
    elif folders:
        classes = [p.name for p in folders if any(f.suffix.lower() in IMAGE_EXTS for f in p.iterdir())]
        found = f"the subfolders {', '.join(p.name + '/' for p in folders[:6])}" + (
            " holding images, the layout of image classification (a folder per class)" if classes else "")
    else:
        pictures = sum(p.suffix.lower() in IMAGE_EXTS for p in entries)
        found = f"{pictures} images and no subfolders" if pictures else f"no subfolders ({len(entries)} files)"
    raise UserError(f"{path}: {expected}; found {found}")


def _has_sets(root: Path) -> bool:
    return (root / "ImageSets" / "Segmentation" / "train.txt").is_file()


def _folder_pairs(root: Path) -> list[tuple[str, str]]:
    images, masks = root / "images", root / "masks"
    check_layout(root, "folder")
    found = {p.stem: str(p) for p in sorted(masks.iterdir()) if p.suffix.lower() in MASK_EXTS}
    pairs = []
    for image in sorted(images.iterdir()):
        if image.suffix.lower() not in IMAGE_EXTS or image.name.startswith("."):
            continue
        if image.stem not in found:
            raise UserError(f"{image}: no mask for this image (expected {masks}/{image.stem}.png)")
        pairs.append((os.path.abspath(image), os.path.abspath(found[image.stem])))
    paired = {Path(image).stem for image, _ in pairs}
    orphans = [file for stem, file in found.items() if stem not in paired and not Path(file).name.startswith(".")]
    if orphans:  # refused as detection refuses a label without an image: a pair was meant and one half is missing
        raise UserError(f"{orphans[0]}: a mask without an image (no {images}/{Path(orphans[0]).stem}.*; "
                        f"{len(orphans)} such mask(s)); add the image or remove the mask")
    return pairs


def _csv_pairs(path: Path) -> list[tuple[str, str]]:
    _, rows = read_rows(path, ["image", "mask"])
    pairs = []
    for line, row in rows:
        image, mask = (os.path.abspath(path.parent / (row[c] or "").strip()) for c in ("image", "mask"))
        for name, file in (("image", image), ("mask", mask)):
            if not os.path.isfile(file):
                raise UserError(f"{path} line {line}: {name} file not found: {file}")
        pairs.append((image, mask))
    return pairs


def palette_lookup(palette: dict[str, list[int]], classes: list[str]) -> dict[tuple, int]:
    missing = [c for c in classes if c not in palette]
    unknown = [c for c in palette if c not in classes]
    if missing or unknown:
        raise UserError(f"data.palette: every class needs a colour (missing: {missing}; not classes: {unknown})")
    return {tuple(rgb): classes.index(name) for name, rgb in palette.items()}


def label_table(label_map: dict | None, ignore_index: int) -> np.ndarray | None:
    """data.label_map as a lookup table over every 16-bit id (and one more, for ids beyond): the ids it does not name
    become `ignore_index`."""
    if not label_map:
        return None
    table = np.full((1 << 16) + 1, ignore_index, np.uint8)
    for label_id, train_id in label_map.items():
        table[int(label_id)] = int(train_id)
    return table


def read_mask(path: str, lookup: dict[tuple, int] | None, image: str | None = None,
              table: np.ndarray | None = None) -> np.ndarray:
    """A mask as class indices (H, W) uint8, ids mapped through `table` (label_table) when given; with `image`,
    checks that both have the same size."""
    try:
        with Image.open(path) as m:
            mode, size = m.mode, m.size
            array = np.asarray(m.convert("RGB") if mode in ("RGB", "RGBA") else m)
    except Exception as e:  # PIL raises many types for corrupt files
        raise UserError(f"{path}: cannot read mask ({e})") from None
    if image is not None:
        try:
            with Image.open(image) as im:
                image_size = im.size
        except Exception as e:  # PIL raises many types for files that are no image it can read
            reason = "an empty file" if os.path.getsize(image) == 0 else f"{type(e).__name__}: {e}"
            raise UserError(f"{image}: not a readable image ({reason}); replace or remove it (and its mask)") \
                from None
        if image_size != size:
            raise UserError(f"{path}: mask is {size[0]}x{size[1]} but its image {image} is "
                            f"{image_size[0]}x{image_size[1]}")
    if array.ndim == 2 and table is not None:  # the table's last entry is the ignore index: ids beyond it map there
        ids = array.astype(np.int64)
        return table[np.where((ids >= 0) & (ids < len(table)), ids, len(table) - 1)]
    if array.ndim == 2:
        return array.astype(np.uint8)
    if lookup is None:
        raise UserError(f"{path}: an RGB mask; give data.palette ({{class: [r, g, b]}}) or save masks as class "
                        f"indices (single-channel or palette PNG)")
    codes = array[..., 0].astype(np.int64) << 16 | array[..., 1].astype(np.int64) << 8 | array[..., 2]
    table = {r << 16 | g << 8 | b: index for (r, g, b), index in lookup.items()}
    colours, inverse = np.unique(codes, return_inverse=True)
    unknown = [f"#{c:06x}" for c in colours if int(c) not in table]
    if unknown:
        raise UserError(f"{path}: colours {unknown[:6]} are not in data.palette")
    return np.array([table[int(c)] for c in colours], dtype=np.uint8)[inverse].reshape(codes.shape)


def joint_transforms(pre: Preprocess, size: int, augment: str, ignore_index: int) -> tuple[v2.Compose, v2.Compose]:
    """(train, eval) transforms of an (image, mask) pair at size x size, normalised as the backbone was trained."""
    finish = [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
              v2.Normalize(pre.mean, pre.std)]
    eval_tf = v2.Compose([v2.Resize((size, size), antialias=True), *finish])
    if augment == "none":
        return eval_tf, eval_tf
    scale = (0.5, 1.0) if augment == "light" else (0.25, 1.0)
    train = [v2.RandomResizedCrop((size, size), scale=scale, antialias=True), v2.RandomHorizontalFlip()]
    if augment == "strong":
        train += [v2.RandomRotation(15, fill={tv_tensors.Mask: ignore_index, "others": 0}),
                  v2.ColorJitter(0.3, 0.3, 0.3)]
    return v2.Compose([*train, *finish]), eval_tf


class PairDataset(EpochSeeded, Dataset):
    """(normalised image (3, S, S), mask (S, S) int64) of each pair."""

    def __init__(self, samples: Samples, transform, lookup: dict[tuple, int] | None, table: np.ndarray | None = None):
        self.samples, self.transform, self.lookup, self.table = samples, transform, lookup, table

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        image_path, mask_path = self.samples.items[i]
        image = tv_tensors.Image(torch.from_numpy(np.array(read_image(image_path))).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(read_mask(mask_path, self.lookup, table=self.table).astype(np.int64)))
        with self.seeded(i):
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def eval_dataset(info, samples: Samples) -> PairDataset:
    """A finished run's eval dataset of `samples` (`info`: its model.json: preprocessing, image size, ignore_index,
    palette, label map and classes)."""
    _, eval_tf = joint_transforms(info.preprocess, info.image_size, "none", info.ignore_index)
    return PairDataset(samples, eval_tf, palette_lookup(info.palette, info.classes) if info.palette else None,
                       label_table(getattr(info, "label_map", None), info.ignore_index))
