"""Where a segmentation dataset's pairs are, in the layouts people bring: `images/` + `masks/` (paired by name), a CSV
manifest `image,mask`, Pascal VOC (`JPEGImages/`, `SegmentationClass/` palette PNGs, `ImageSets/Segmentation/
<split>.txt`) and Cityscapes (`leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/<split>/<city>/
*_gtFine_labelIds.png`).

A VOC or Cityscapes root is one source with several splits: `data.train` pointing at it fills the absent `data.val`
and `data.test`. Each of these layouts brings its own defaults when the recipe gives none: VOC's 21 class names
(its palette PNGs hold the class indices, 255 the borders), and Cityscapes' 19 training classes with the label map
from its label ids (cityscapesscripts' labels.py: every other id is ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

from sft.data.images import IMAGE_EXTS
from sft.errors import UserError

SPLITS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
LAYOUTS = ("images/ + masks/ (the pictures, and for each a mask of class indices with the same name); a CSV manifest "
           "`image,mask`; Pascal VOC: JPEGImages/ + SegmentationClass/ (+ ImageSets/Segmentation/<split>.txt); "
           "Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png")

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle"]
CITYSCAPES_LABEL_MAP = {label_id: train_id for train_id, label_id in
                        enumerate([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])}
CITYSCAPES_MASK = "_gtFine_labelIds.png"


def layout(path: Path, format: str) -> str:
    """folder, csv, voc or cityscapes."""
    if format != "auto":
        return format
    if path.is_file():
        if path.suffix.lower() == ".txt" and path.parent.parent.name == "ImageSets":
            return "voc"
        return "csv" if path.suffix.lower() == ".csv" else "folder"
    if (path / "SegmentationClass").is_dir():
        return "voc"
    if (path / "leftImg8bit").is_dir() or "leftImg8bit" in path.parts:
        return "cityscapes"
    return "folder"


def dataset_splits(path: Path, format: str) -> list[str]:
    """The splits (train, val, test) that one source holds: a VOC or Cityscapes root's; [] for a single split."""
    if not path.is_dir():
        return []
    kind = layout(path, format)
    if kind == "voc":
        return [s for s in SPLITS if (path / "ImageSets" / "Segmentation" / f"{s}.txt").is_file()]
    if kind == "cityscapes" and (path / "leftImg8bit").is_dir():
        return [s for s in SPLITS if _split_dir(path / "leftImg8bit", s) is not None]
    return []


def voc_pairs(where: Path, split: str | None) -> list[tuple[str, str]]:
    """(image, SegmentationClass mask) of an ImageSets/Segmentation .txt, of the root's `split` list, or of every
    mask of the root."""
    if where.is_file():
        root, listing = where.parents[2], where
    else:
        root, listing = where, where / "ImageSets" / "Segmentation" / f"{split}.txt" if split else None
        if listing is not None and not listing.is_file():
            raise UserError(f"{root}: no {split} split ({listing} not found)")
    for folder in ("JPEGImages", "SegmentationClass"):
        if not (root / folder).is_dir():
            raise UserError(f"{root}: a VOC folder needs JPEGImages/ and SegmentationClass/ (no {folder}/)")
    if listing is None:
        ids = [(p.stem, str(p)) for p in sorted((root / "SegmentationClass").glob("*.png"))]
    else:
        ids = [(text.split()[0], f"{listing} line {line}")
               for line, text in enumerate(listing.read_text().splitlines(), 1) if text.split()]
    pairs = []
    for image_id, listed in ids:
        mask = root / "SegmentationClass" / f"{image_id}.png"
        image = next((p for p in sorted((root / "JPEGImages").glob(f"{image_id}.*"))
                      if p.suffix.lower() in IMAGE_EXTS), None)
        if not mask.is_file():
            raise UserError(f"{listed}: no mask {mask}")
        if image is None:
            raise UserError(f"{listed}: no image {root / 'JPEGImages' / image_id}.* for {mask.name}")
        pairs.append((os.path.abspath(image), os.path.abspath(mask)))
    return pairs


def cityscapes_pairs(where: Path, split: str | None) -> list[tuple[str, str]]:
    """(*_leftImg8bit image, *_gtFine_labelIds mask) of a root's split, or of a folder inside leftImg8bit/."""
    if (where / "leftImg8bit").is_dir():
        folder = _split_dir(where / "leftImg8bit", split or "train")
        if folder is None:
            raise UserError(f"{where}: no {split or 'train'} split (no {where / 'leftImg8bit' / (split or 'train')}/)")
    else:
        folder = where
    parts = list(folder.parts)
    i = len(parts) - 1 - parts[::-1].index("leftImg8bit")
    masks = Path(*parts[:i], "gtFine", *parts[i + 1:])
    pairs = []
    for image in sorted(folder.rglob("*_leftImg8bit.png")):
        mask = masks / image.relative_to(folder).parent / image.name.replace("_leftImg8bit.png", CITYSCAPES_MASK)
        if not mask.is_file():
            raise UserError(f"{image}: no mask for this image (expected {mask})")
        pairs.append((os.path.abspath(image), os.path.abspath(mask)))
    return pairs


def layout_defaults(path: str, format: str) -> tuple[list[str] | None, dict[int, int] | None]:
    """(class names, label map) that a VOC or Cityscapes source brings; (None, None) for the others."""
    kind = layout(Path(path), format) if Path(path).exists() else format
    if kind == "voc":
        return list(VOC_CLASSES), None
    if kind == "cityscapes":
        return list(CITYSCAPES_CLASSES), dict(CITYSCAPES_LABEL_MAP)
    return None, None


def _split_dir(root: Path, split: str) -> Path | None:
    return next((root / name for name in SPLITS[split] if (root / name).is_dir()), None)
