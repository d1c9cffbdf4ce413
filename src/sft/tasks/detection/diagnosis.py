"""Why a detector learns nothing: when mAP stays near 0 after fine-tuning it is nearly always the data's boxes, not
the model (mmdet 8645, detr 387). These checks read only the training boxes, the input size and the anchors, and say
what they checked and what looks wrong: boxes in the wrong format or scale, labels off by one against the
background index, empty targets, boxes far smaller than the smallest anchor.

Two of them need no trained model and are run before training too (`check_before_training`): a split without a single
box stops the run (there is nothing to learn or score), and boxes that look normalised to 0..1 where pixels are wanted
stop it when every coordinate is at most 1 (no real object fits in the image's top-left pixel), else warn.
"""

from __future__ import annotations

import logging

import numpy as np

from sft.errors import UserError
from sft.tasks.detection.data import DetectionSamples

log = logging.getLogger("sft")

CHECKS = ["empty targets", "box format (xywh/xyxy) and scale (pixels/normalised)",
          "labels off by one against the background index", "box sizes against the anchors"]


def diagnose(train: DetectionSamples, size: int, anchor_sizes: list[float]) -> list[str]:
    """What looks wrong in the training data for a detector at `size` px with these smallest anchors per level."""
    problems = []
    n_images = len(train)
    if not any(len(b) for b in train.boxes):
        return [empty_targets(train, "training")]
    if train.negatives > 0.9 * n_images:
        problems.append(f"{train.negatives} of {n_images} training images have no box (empty targets): too few "
                        f"objects to learn from")
    boxes = [b for b in train.boxes if len(b)]
    all_boxes = np.concatenate(boxes)
    widths, heights = all_boxes[:, 2] - all_boxes[:, 0], all_boxes[:, 3] - all_boxes[:, 1]
    if scale := box_scale(train):
        problems.append(scale)
    image_widths = np.concatenate([np.full(len(b), s[0]) for b, s in zip(train.boxes, train.sizes) if len(b)])
    if len(all_boxes) >= 10:
        # x2 y2 read as width and height: then "width" > x and "height" > y for (nearly) every box. Large centred
        # boxes read right do that too, so only boxes small against their image (a misread that still fits the
        # image: objects near the top-left) are flagged, and only as a possibility
        share = float(np.mean((widths > all_boxes[:, 0]) & (heights > all_boxes[:, 1])))
        if share > 0.8 and np.median(widths / image_widths) < 0.4:
            problems.append(f"{share:.0%} of the boxes are wider than their x and taller than their y, though most "
                            f"are small against their image: possibly [x1, y1, x2, y2] (xyxy) read as [x, y, width, "
                            f"height] (box format)")
    counts = np.bincount(np.concatenate(train.box_labels), minlength=len(train.classes))[:len(train.classes)]
    if counts[0] == 0 and (counts[1:] > 0).all() and len(counts) > 1:
        problems.append(f"class 0 ({train.classes[0]!r}) has no box while classes 1..{len(counts) - 1} all do: "
                        f"the labels look 1-based (off by one against the background index), so every box trains "
                        f"the next class's name; renumber them from 0, or set data.classes to match")
    sides = train.box_sides(size)
    median, smallest = float(np.median(sides)), float(min(anchor_sizes))
    if median < smallest / 2:
        problems.append(f"the median box side is {median:.1f} px at {size} px input, under half the smallest anchor "
                        f"({smallest:g} px): few boxes can match an anchor; use model.anchor_sizes=auto (or smaller "
                        f"sizes) or a larger data.image_size")
    return problems


def empty_targets(samples: DetectionSamples, name: str) -> str:
    return (f"every one of the {len(samples)} {name} images has no box (empty targets): the detector can only learn "
            f"the background; check the annotation file or the label folder")


def box_scale(samples: DetectionSamples) -> str | None:
    """The box-scale problem, if any: a median box of at most 1.5 px in images over 16 px reads as coordinates
    normalised to 0..1 given as pixels."""
    kept = [(b, s) for b, s in zip(samples.boxes, samples.sizes) if len(b)]
    if not kept:
        return None
    boxes = np.concatenate([b for b, _ in kept])
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    image_sides = np.concatenate([np.full(len(b), min(s)) for b, s in kept])
    if np.median(np.maximum(widths, heights)) <= 1.5 and np.median(image_sides) > 16:
        return (f"the median box is {np.median(widths):.2g} x {np.median(heights):.2g} px in images of about "
                f"{np.median(image_sides):.0f} px: coordinates normalised to 0..1 were given as pixels (box scale)")
    return None


def check_before_training(splits: dict[str, DetectionSamples], where: dict[str, str]) -> None:
    """Refuse a split with no box, and boxes whose every coordinate is at most 1 pixel; warn when the median box
    only looks normalised. `where` names each split's source for the message."""
    for name, samples in splits.items():
        if samples is None:
            continue
        if not any(len(b) for b in samples.boxes):
            raise UserError(f"data.{name} ({where[name]}): the split has {len(samples)} images and no boxes; "
                            f"{empty_targets(samples, name)}")
        problem = box_scale(samples)
        if problem is None:
            continue
        advice = ("COCO's bbox is [x, y, width, height] in pixels: multiply x and width by the image's width, y and "
                  "height by its height (YOLO labels are the normalised ones)")
        if max(float(b.max()) for b in samples.boxes if len(b)) <= 1.0:
            raise UserError(f"data.{name} ({where[name]}): every box lies within 1 pixel of the image's corner: "
                            f"{problem}; {advice}")
        log.warning(f"data.{name} ({where[name]}): {problem}; {advice}")
