"""When mAP stays near 0: each usual mistake, made on purpose in the training boxes, is named."""

import numpy as np

from sft.tasks.detection.data import DetectionSamples
from sft.tasks.detection.diagnosis import diagnose

CLASSES = ["cat", "dog", "bird"]
ANCHORS = [8.0, 16.0, 32.0, 64.0, 128.0]


def samples(boxes: list[list], labels: list[list], size=(160, 160)) -> DetectionSamples:
    n = len(boxes)
    return DetectionSamples([f"/x/{i}.png" for i in range(n)], np.zeros(n, np.int64), CLASSES,
                            [f"{i}" for i in range(n)], "detection",
                            [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes],
                            [np.asarray(c, np.int64) for c in labels], [size] * n)


def good(n=12, seed=0):
    """Boxes anywhere on the canvas, 20-60 px, every class."""
    rng = np.random.default_rng(seed)
    boxes, labels = [], []
    for i in range(n):
        x, y = rng.uniform(0, 100, 2)
        w, h = rng.uniform(20, 60, 2)
        boxes.append([[x, y, min(x + w, 160), min(y + h, 160)]])
        labels.append([i % 3])
    return boxes, labels


def test_clean_boxes_raise_nothing():
    assert diagnose(samples(*good()), 160, ANCHORS) == []


def test_empty_targets():
    problems = diagnose(samples([[]] * 5, [[]] * 5), 160, ANCHORS)
    assert len(problems) == 1 and "every one of the 5 training images has no box (empty targets)" in problems[0]
    boxes, labels = good(2)
    mostly_empty = samples(boxes + [[]] * 30, labels + [[]] * 30)
    assert any("32 training images have no box" in p or "30 of 32" in p for p in diagnose(mostly_empty, 160,
                                                                                           ANCHORS))


def test_normalised_coordinates_given_as_pixels():
    boxes, labels = good()
    scaled = [[[v / 160 for v in b] for b in image] for image in boxes]
    assert any("normalised to 0..1 were given as pixels" in p for p in diagnose(samples(scaled, labels), 160,
                                                                                ANCHORS))


def test_xyxy_read_as_xywh():
    rng = np.random.default_rng(1)
    boxes, labels = [], []
    for i in range(12):  # objects in the top-left quarter: read as xywh they still fit the image
        x1, y1 = rng.uniform(0, 30, 2)
        x2, y2 = x1 + rng.uniform(20, 40), y1 + rng.uniform(20, 40)
        boxes.append([[x1, y1, x1 + x2, y1 + y2]])  # what a reader taking x2, y2 as width and height builds
        labels.append([i % 3])
    assert any("possibly [x1, y1, x2, y2] (xyxy) read as [x, y, width, height]" in p
               for p in diagnose(samples(boxes, labels), 160, ANCHORS))


def test_large_centred_boxes_are_not_taken_for_a_misread():
    rng = np.random.default_rng(2)
    boxes, labels = [], []
    for i in range(12):  # read right: wider than their x because they fill most of the image
        x1, y1 = rng.uniform(10, 40, 2)
        boxes.append([[x1, y1, 160 - rng.uniform(10, 40), 160 - rng.uniform(10, 40)]])
        labels.append([i % 3])
    assert diagnose(samples(boxes, labels), 160, ANCHORS) == []


def test_labels_off_by_one_against_the_background():
    boxes, labels = good()
    shifted = [[min(c + 1, 2) if c == 0 else c for c in image] for image in labels]  # 1-based: class 0 unused
    assert any("look 1-based (off by one against the background index)" in p
               for p in diagnose(samples(boxes, shifted), 160, ANCHORS))


def test_boxes_far_smaller_than_the_smallest_anchor():
    boxes, labels = good()
    assert any("under half the smallest anchor (128 px)" in p
               for p in diagnose(samples(boxes, labels), 160, [128.0, 256.0, 512.0, 1024.0, 2048.0]))
