"""Images with boxes: COCO JSON (an instances file, images beside it), YOLO (images + labels/*.txt of normalised
`class cx cy w h`, found by Ultralytics' images -> labels rule, in sft's and Roboflow's `<split>/images`, the
Ultralytics `images/<split>` tree or an Ultralytics data.yaml) or Pascal VOC XML; where each layout's files are is
sft.tasks.detection.layouts. Images without boxes are negatives: kept, and counted.

Every annotation is checked when the split is read, so a box outside its image or of non-positive size, an unknown
category, a label file without an image, an empty split, a coordinate that is not a finite number (NaN passes every
comparison, so it would slip past the other checks and train to the end), or a box written in the other convention
(xyxy where COCO wants xywh, xyxy or pixels where YOLO wants normalised cx cy w h) stops the run before training,
naming the file and the annotation id, line or object. Images and boxes are transformed together
(torchvision.transforms.v2 with `tv_tensors.BoundingBoxes`), and in training boxes that a crop leaves empty are
dropped with their labels (SanitizeBoundingBoxes); evaluation keeps them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from sft.data.samples import EpochSeeded, Samples, read_image
from sft.errors import UserError
from sft.tasks.detection.layouts import (detect_format, label_file, labels_folder, load_yaml, voc_ids, yaml_names,
                                         yaml_split, yolo_images)
from sft.tasks.detection.mosaic import meeting_point, mosaic

TOLERANCE = 1.0  # pixels a box may pass the image border by (rounding in exporters); it is clamped


@dataclass
class DetectionSamples(Samples):
    """Samples whose `items` are image paths, with `boxes[i]` (n, 4) xyxy pixels and `box_labels[i]` (n,) 0-based
    class indices per image; no `labels` (splits are plain seeded draws, not stratified by class)."""
    boxes: list = field(default_factory=list)
    box_labels: list = field(default_factory=list)
    sizes: list = field(default_factory=list)  # (width, height) of each image

    def box_sides(self, size: int) -> np.ndarray:
        """sqrt(area) of every box once its image is resized to size x size: what anchors are chosen from."""
        sides = [np.sqrt((b[:, 2] - b[:, 0]) * size / w * (b[:, 3] - b[:, 1]) * size / h)
                 for b, (w, h) in zip(self.boxes, self.sizes)]
        return np.concatenate([np.zeros(0, np.float32), *sides])

    def subset(self, indices) -> "DetectionSamples":
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return DetectionSamples([self.items[i] for i in idx], None, list(self.classes),
                                [self.ids[i] for i in idx], self.kind, [self.boxes[i] for i in idx],
                                [self.box_labels[i] for i in idx], [self.sizes[i] for i in idx])

    @property
    def negatives(self) -> int:
        return sum(len(b) == 0 for b in self.boxes)

    def fingerprint(self) -> str:
        h = hashlib.sha256(super().fingerprint().encode())
        for boxes, labels in zip(self.boxes, self.box_labels):
            h.update(np.ascontiguousarray(boxes, np.float32).tobytes() + np.asarray(labels, np.int64).tobytes())
        return h.hexdigest()


def read_detection(path: str | Path, format: str, classes: list[str] | None,
                   split: str | None = None) -> DetectionSamples:
    """One split, every box checked; `split` picks one of a source holding several (a data.yaml, a VOC root, a
    dataset root with split folders). Class names: `classes` (the recipe), else the data's own (COCO categories,
    data.yaml names, classes.txt, the names in the VOC annotations)."""
    kind, where = detect_format(Path(path), format)
    if kind == "coco":
        columns = read_coco(where, classes)
    elif kind == "voc":
        columns = read_voc(where, split, classes)
    elif kind == "ultralytics":
        columns = read_ultralytics(where, split or "train", classes)
    else:
        columns = read_yolo(where, classes, split)
    images, boxes, labels, sizes, classes = columns
    if not images:
        raise UserError(f"{where}: no images in this split")
    return DetectionSamples(images, None, classes, list(images), "detection", boxes,
                            labels, sizes)


def read_coco(path: Path, classes: list[str] | None):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read COCO JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: not a COCO instances file (no \"images\" list)")
    categories = data.get("categories") or []
    for n, c in enumerate(categories):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise UserError(f"{path}: category {n} ({c!r:.80}) needs an \"id\" and a \"name\"")
    categories = sorted(categories, key=lambda c: c["id"])
    names = [str(c["name"]) for c in categories]
    if classes is None:
        classes = names
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise UserError(f"{path}: categories {unknown[:5]} are not in data.classes {classes}")
    index_of = {c["id"]: classes.index(str(c["name"])) for c in categories}
    images, sizes, order = {}, {}, []
    for n, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "id" not in entry:
            raise UserError(f"{path}: image entry {n} ({entry!r:.80}) has no \"id\"")
        where = f"{path}: image id {entry.get('id')}"
        file = _find_image(path.parent, str(entry.get("file_name", "")), where)
        images[entry["id"]] = file
        sizes[entry["id"]] = _coco_size(entry, where)
        order.append(entry["id"])
    found = {i: ([], []) for i in order}
    for n, ann in enumerate(data.get("annotations") or []):
        if not isinstance(ann, dict):
            raise UserError(f"{path}: annotation {n} is not an object ({ann!r:.80})")
        where = f"{path}: annotation id {ann['id']}" if "id" in ann else f"{path}: annotation {n} (no id)"
        if ann.get("image_id") not in images:
            raise UserError(f"{where}: image_id {ann.get('image_id')} is not in \"images\"")
        if ann.get("category_id") not in index_of:
            raise UserError(f"{where}: unknown category id {ann.get('category_id')} (known: {sorted(index_of)})")
        if ann.get("iscrowd"):
            continue  # crowd regions are not objects to find (COCO's own evaluation ignores them)
        if not all(sizes[ann["image_id"]]):
            sizes[ann["image_id"]] = _image_size(images[ann["image_id"]])
        w, h = sizes[ann["image_id"]]
        try:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: expected \"bbox\": [x, y, width, height] (4 numbers), got "
                            f"{ann.get('bbox')!r:.80}") from None
        check_finite([x, y, bw, bh], where, f"bbox {ann['bbox']}")
        box = check_box([x, y, x + bw, y + bh], w, h, where, f"bbox {ann['bbox']}",
                        xyxy_hint=bw > x and bh > y and bw <= w + TOLERANCE and bh <= h + TOLERANCE,
                        hint="it looks like [x1, y1, x2, y2] (xyxy); COCO's bbox is [x, y, width, height]")
        found[ann["image_id"]][0].append(box)
        found[ann["image_id"]][1].append(index_of[ann["category_id"]])
    sizes = {k: v if all(v) else _image_size(images[k]) for k, v in sizes.items()}
    return _columns(images, found, sizes, order, classes)


def read_yolo(path: Path, classes: list[str] | None, split: str | None = None):
    """A YOLO split folder (or a .txt list of images); each image's labels by Ultralytics' images -> labels rule."""
    files, folder = yolo_images(path, split)
    if folder is None:
        return read_yolo_files(files, classes or yolo_classes(path.parent))
    tree = Path(*folder.parts[:len(folder.parts) - 1 - folder.parts[::-1].index("images")]) \
        if "images" in folder.parts else folder.parent
    classes = classes or yolo_classes(path, path.parent, tree, labels_folder(folder))
    expected = {os.path.normcase(label_file(f)) for f in files}
    for label in sorted(labels_folder(folder).rglob("*.txt")):
        if os.path.normcase(os.path.abspath(label)) not in expected and label.name != "classes.txt":
            raise UserError(f"{label}: a label file without an image (no {folder}/{label.stem}.*)")
    return read_yolo_files(files, classes)


def read_ultralytics(path: Path, split: str, classes: list[str] | None):
    """One split of an Ultralytics data.yaml; its `names` are the classes (data.classes must agree)."""
    names = yaml_names(load_yaml(path), path)
    if classes is not None and list(classes) != names:
        raise UserError(f"{path}: names {names} differ from data.classes {list(classes)}; the label files number "
                        f"the yaml's classes, so remove data.classes or make it the same list")
    return read_yolo_files(yaml_split(path, split), names)


def read_yolo_files(files: list[str], classes: list[str]):
    """Boxes of each image from its label file (none: a negative, as in YOLO), every line checked."""
    found = {file: ([], []) for file in files}
    sizes = {file: _image_size(file) for file in files}
    for file in files:
        label = Path(label_file(file))
        if not label.is_file():
            continue
        w, h = sizes[file]
        for line, text in enumerate(label.read_text().splitlines(), 1):
            parts = text.split()
            if not parts:
                continue
            where = f"{label} line {line}"
            try:
                cls, cx, cy, bw, bh = int(parts[0]), *(float(v) for v in parts[1:])
            except ValueError:
                cls = None
            if cls is None or len(parts) != 5:
                raise UserError(f"{where}: expected `class cx cy w h` (5 numbers), got {text.strip()!r}")
            check_finite([cx, cy, bw, bh], where, f"box {text.strip()!r}")
            if not 0 <= cls < len(classes):
                raise UserError(f"{where}: class {cls} is not one of 0..{len(classes) - 1} ({len(classes)} classes)")
            values = [cx, cy, bw, bh]
            if max(values) > 1.0 + 1e-6:
                raise UserError(f"{where}: coordinates {values} are not normalised to 0..1 (pixels? YOLO wants "
                                f"cx cy w h divided by the image's width and height)")
            box = check_box([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], w, h,
                            where, f"box {text.strip()!r}", xyxy_hint=bw > cx and bh > cy,
                            hint="it looks like x1 y1 x2 y2 (xyxy); YOLO wants cx cy w h")
            found[file][0].append(box)
            found[file][1].append(cls)
    return _columns({f: f for f in files}, found, sizes, files, classes)


def read_voc(where: Path, split: str | None, classes: list[str] | None):
    """Pascal VOC XML: one Annotations/<id>.xml per image of JPEGImages/. Boxes are 1-based inclusive pixels, made
    0-based xyxy as torchvision's VOC references do (xmin - 1, ymin - 1, xmax, ymax). Objects marked difficult are
    kept as ordinary boxes: the COCO-style mAP here has no ignore flag, so dropping them would count a correct
    detection of one as a false positive, while keeping them only asks the detector to find real objects.
    Classes: data.classes, else every name in the root's annotations (all splits), sorted."""
    root, ids = voc_ids(where, split)
    classes = list(classes) if classes else voc_classes(root)
    images, found, sizes = {}, {}, {}
    for image_id, listed in ids:
        xml = root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise UserError(f"{listed}: no annotation {xml}")
        tree = _parse_xml(xml)
        name = (tree.findtext("filename") or "").strip()
        candidates = [root / "JPEGImages" / name] if name else []
        candidates += sorted((root / "JPEGImages").glob(f"{image_id}.*"))
        image = next((p for p in candidates if p.is_file()), None)
        if image is None:
            raise UserError(f"{xml}: image {name or image_id + '.*'} not found in {root / 'JPEGImages'}")
        images[image_id], found[image_id] = os.path.abspath(image), ([], [])
        sizes[image_id] = w, h = _image_size(images[image_id])
        for n, obj in enumerate(tree.findall("object")):
            label = (obj.findtext("name") or "").strip()
            at = f"{xml}: object {n} ({label or 'no name'})"
            if label not in classes:
                raise UserError(f"{at}: class {label!r} is not in data.classes {classes}")
            text = [obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
            try:
                x0, y0, x1, y1 = (float(v) for v in text)
            except (TypeError, ValueError):
                raise UserError(f"{at}: expected <bndbox> with xmin, ymin, xmax, ymax numbers, got {text}") from None
            check_finite([x0, y0, x1, y1], at, f"bndbox {text}")
            found[image_id][0].append(check_box([x0 - 1, y0 - 1, x1, y1], w, h, at, f"bndbox {text}", False, ""))
            found[image_id][1].append(classes.index(label))
    return _columns(images, found, sizes, list(images), classes)


def voc_classes(root: Path) -> list[str]:
    names = {(obj.findtext("name") or "").strip() for xml in sorted((root / "Annotations").glob("*.xml"))
             for obj in _parse_xml(xml).findall("object")}
    return sorted(names - {""})


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise UserError(f"{path}: cannot read this VOC annotation ({e})") from None


def check_finite(values: list[float], where: str, shown: str) -> None:
    """A UserError unless every coordinate is a finite number: NaN fails no comparison in check_box."""
    if not all(np.isfinite(values)):
        raise UserError(f"{where}: {shown} has a coordinate that is not a finite number (NaN or infinity); fix or "
                        f"remove this box")


def _coco_size(entry: dict, where: str) -> tuple:
    """An image entry's (width, height); absent or 0 ones are read from the image file later."""
    w, h = entry.get("width"), entry.get("height")
    if not all(v in (None, 0) or (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0)
               for v in (w, h)):
        raise UserError(f"{where}: \"width\" and \"height\" must be positive numbers of pixels, got {w!r} and {h!r}; "
                        f"fix them or remove both (the image file is then read)")
    return w, h


def check_box(box: list[float], w: float, h: float, where: str, shown: str, xyxy_hint: bool, hint: str) -> list:
    """The box clamped to the image, or a UserError: non-positive size, or outside the image (with `hint` when the
    numbers read as the other convention)."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise UserError(f"{where}: {shown} has a non-positive width or height")
    if x0 < -TOLERANCE or y0 < -TOLERANCE or x1 > w + TOLERANCE or y1 > h + TOLERANCE:
        because = f"; {hint}" if xyxy_hint else ""
        raise UserError(f"{where}: {shown} lies outside its {w:g}x{h:g} image{because}")
    return [max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))]


def yolo_classes(*folders: Path) -> list[str]:
    """Class names from the first classes.txt or data.yaml `names` (list or {index: name}) in `folders`."""
    for folder in dict.fromkeys(folders):
        if (folder / "classes.txt").is_file():
            return [s.strip() for s in (folder / "classes.txt").read_text().splitlines() if s.strip()]
        for name in ("data.yaml", "data.yml"):
            if (folder / name).is_file():
                return yaml_names(load_yaml(folder / name), folder / name)
    raise UserError(f"{folders[0]}: set data.classes or put a classes.txt (or data.yaml with names) beside the data")


def _find_image(folder: Path, name: str, where: str) -> str:
    for candidate in (folder / name, folder / "images" / name, folder / "images" / Path(name).name):
        if candidate.is_file():
            return os.path.abspath(candidate)
    raise UserError(f"{where}: image file {name!r} not found beside the JSON or in images/")


def _image_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # PIL raises many types for corrupt files
        raise UserError(f"{path}: cannot read image ({e})") from None


def _columns(images: dict, found: dict, sizes: dict, order: list, classes: list[str]):
    files = [images[k] for k in order]
    boxes = [np.asarray(found[k][0], np.float32).reshape(-1, 4) for k in order]
    labels = [np.asarray(found[k][1], np.int64) for k in order]
    return files, boxes, labels, [tuple(sizes[k]) for k in order], list(classes)


def box_transforms(size: int, augment: str) -> tuple[v2.Compose, v2.Compose]:
    """(train, eval) transforms of (image, {"boxes", "labels"}) to a size x size float image in 0..1 (the detector
    normalises it with the backbone's mean and std). Training: flip, scale jitter, then a crop (or pad) back to the
    size; boxes cut to nothing are dropped with their labels. Evaluation keeps every box (clamped only): a box that
    shrinks under a pixel is still an object to find, and dropping it would raise the mAP."""
    finish = [v2.ToDtype(torch.float32, scale=True), v2.ClampBoundingBoxes()]
    eval_tf = v2.Compose([v2.Resize((size, size), antialias=True), *finish])
    finish.append(v2.SanitizeBoundingBoxes(min_size=1))
    if augment == "none":
        return v2.Compose([v2.Resize((size, size), antialias=True), *finish]), eval_tf
    jitter = (0.75, 1.25) if augment == "light" else (0.5, 1.5)
    train = [v2.Resize((size, size), antialias=True), v2.RandomHorizontalFlip(),
             v2.ScaleJitter((size, size), scale_range=jitter, antialias=True),
             v2.RandomCrop((size, size), pad_if_needed=True)]
    if augment == "strong":
        train.append(v2.ColorJitter(0.3, 0.3, 0.3))
    return v2.Compose([*train, *finish]), eval_tf


def load_image(path: str) -> tv_tensors.Image:
    return tv_tensors.Image(torch.from_numpy(np.array(read_image(path))).permute(2, 0, 1))


def transform_image(transform, image: tv_tensors.Image) -> torch.Tensor:
    """An image alone through a box-aware transform (it expects boxes: an empty set is given)."""
    boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=tuple(image.shape[-2:]))
    return transform(image, {"boxes": boxes, "labels": torch.zeros(0, dtype=torch.int64)})[0].as_subclass(
        torch.Tensor)


class BoxDataset(EpochSeeded, Dataset):
    """(image (3, S, S) float 0..1, {"boxes": (n, 4) xyxy pixels, "labels": (n,) 0-based classes}) per image; with
    `mosaic` > 0, that share of them in the epochs before `mosaic_epochs` a mosaic of this image and three others
    drawn at random (detection.mosaic)."""

    def __init__(self, samples: DetectionSamples, transform, mosaic: float = 0.0, mosaic_epochs: int = 0):
        self.samples, self.transform, self.mosaic, self.mosaic_epochs = samples, transform, mosaic, mosaic_epochs

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        with self.seeded(i):  # the mosaic's draws too: a function of (seed, epoch, index) like the transform's
            if self.mosaic and self.epoch < self.mosaic_epochs and random.random() < self.mosaic:
                others = [random.randrange(len(self)) for _ in range(3)]
                parts = [self._transformed(j) for j in (i, *others)]
                image, boxes, labels = mosaic(parts, *meeting_point(parts[0][0].shape[-1]))
            else:
                image, boxes, labels = self._transformed(i)
        return image, {"boxes": boxes, "labels": labels}

    def _transformed(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = load_image(self.samples.items[i])
        target = {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(self.samples.boxes[i]), format="XYXY",
                                                    canvas_size=tuple(image.shape[-2:])),
                  "labels": torch.from_numpy(self.samples.box_labels[i])}
        image, target = self.transform(image, target)
        return (image.as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor).float(),
                target["labels"])


def collate(batch: list) -> tuple[torch.Tensor, list[dict]]:
    """Images stacked (all are S x S), targets kept as a list: each image has its own number of boxes."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)
