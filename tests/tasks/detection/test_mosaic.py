"""Mosaic: each quarter is the part of its image nearest the meeting point, boxes move with it and are clipped or
dropped by what is left of them; in BoxDataset a mosaic is a function of (seed, epoch, index) like any augmentation."""

import pytest
import torch

from sft import load_recipe
from sft.errors import UserError
from sft.tasks.detection.data import BoxDataset, box_transforms, read_detection
from sft.tasks.detection.mosaic import mosaic

S = 32


def part(k: int, boxes: list[list[float]]):
    """Image k: each pixel holds k * 10000 + row * 100 + column, so a pixel says where it came from."""
    rows, cols = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    image = (k * 10000 + rows * 100 + cols).float().expand(3, S, S).clone()
    return image, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.full((len(boxes),), k)


def test_each_quarter_is_the_part_of_its_image_nearest_the_meeting_point():
    x, y = 10, 20
    image, _, _ = mosaic([part(k, []) for k in range(4)], x, y)
    def source(r, c):
        v = int(image[0, r, c])
        return v // 10000, v % 10000 // 100, v % 100
    assert source(0, 0) == (0, S - y, S - x) and source(y - 1, x - 1) == (0, S - 1, S - 1)  # top-left: its corner
    assert source(0, x) == (1, S - y, 0) and source(y - 1, S - 1) == (1, S - 1, S - x - 1)
    assert source(y, 0) == (2, 0, S - x) and source(S - 1, x - 1) == (2, S - y - 1, S - 1)
    assert source(y, x) == (3, 0, 0) and source(S - 1, S - 1) == (3, S - y - 1, S - x - 1)


def test_boxes_move_with_their_quarter_and_are_clipped_or_dropped():
    x, y = 16, 16
    parts = [part(0, [[20, 20, 28, 28], [0, 0, 8, 8], [12, 20, 24, 28]]),  # inside, hidden, 8 of its 12 px wide left
             part(1, []), part(2, []),
             part(3, [[2, 2, 10, 10], [14, 0, 18, 4]])]  # inside; 2 of 4 px wide left: a side of 2 px is dropped
    _, boxes, labels = mosaic(parts, x, y)
    expected = torch.tensor([[4.0, 4, 12, 12], [0, 4, 8, 12], [18, 18, 26, 26]])
    torch.testing.assert_close(boxes, expected)
    assert labels.tolist() == [0, 0, 3]


def test_mosaics_in_the_dataset_are_repeatable_and_keep_boxes_inside(detection_set):
    samples = read_detection(detection_set / "train", "auto", None)
    train_tf, _ = box_transforms(64, "none")
    plain, mixed = BoxDataset(samples, train_tf), BoxDataset(samples, train_tf, mosaic=1.0, mosaic_epochs=2)
    first = mixed[3]
    assert torch.equal(first[0], mixed[3][0]) and torch.equal(first[1]["boxes"], mixed[3][1]["boxes"])
    assert not torch.equal(first[0], plain[3][0])
    boxes = torch.cat([mixed[i][1]["boxes"] for i in range(len(mixed))])
    assert len(boxes) and boxes.min() >= 0 and boxes.max() <= 64
    assert ((boxes[:, 2] - boxes[:, 0]) > 2).all() and ((boxes[:, 3] - boxes[:, 1]) > 2).all()
    mixed.epoch = 1
    assert not torch.equal(first[0], mixed[3][0])  # another epoch, another mosaic
    mixed.epoch = plain.epoch = 2  # the closing epochs: plain images
    assert torch.equal(mixed[3][0], plain[3][0])


def test_a_mosaic_share_with_no_epoch_left_for_it_is_refused():
    with pytest.raises(UserError, match="data.close_mosaic 1 closes all 1 epoch"):
        load_recipe(None, ["task=detection", "data.train=x", "data.mosaic=0.5", "trainer.epochs=1"])
    two = load_recipe(None, ["task=detection", "data.train=x", "data.mosaic=0.5", "trainer.epochs=2"])
    assert two.data.mosaic == 0.5
