"""Why a detector learns nothing: when mAP stays near 0 after fine-tuning it is nearly always the data's boxes, not
the model (mmdet 8645, detr 387). These checks read only the training boxes, the input size and the anchors, and say
what they checked and what looks wrong: boxes in the wrong format or scale, labels off by one against the
background index, empty targets, boxes far smaller than the smallest anchor."""

from __future__ import annotations

import numpy as np

from sft.tasks.detection.data import DetectionSamples

CHECKS = ["empty targets", "box format (xywh/xyxy) and scale (pixels/normalised)",
          "labels off by one against the background index", "box sizes against the anchors"]


def diagnose(train: DetectionSamples, size: int, anchor_sizes: list[float]) -> list[str]:
    """What looks wrong in the training data for a detector at `size` px with these smallest anchors per level."""
    problems = []
    n_images = len(train)
    boxes = [b for b in train.boxes if len(b)]
    if not boxes:
        return [f"every one of the {n_images} training images has no box (empty targets): the detector can only "
                f"learn the background; check the annotation file or the label folder"]
    if train.negatives > 0.9 * n_images:
        problems.append(f"{train.negatives} of {n_images} training images have no box (empty targets): too few "
                        f"objects to learn from")
    all_boxes = np.concatenate(boxes)
    widths, heights = all_boxes[:, 2] - all_boxes[:, 0], all_boxes[:, 3] - all_boxes[:, 1]
    image_sides = np.concatenate([np.full(len(b), min(s)) for b, s in zip(train.boxes, train.sizes) if len(b)])
    if np.median(np.maximum(widths, heights)) <= 1.5 and np.median(image_sides) > 16:
        problems.append(f"the median box is {np.median(widths):.2g} x {np.median(heights):.2g} px in images of "
                        f"about {np.median(image_sides):.0f} px: coordinates normalised to 0..1 were given as "
                        f"pixels (box scale)")
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
