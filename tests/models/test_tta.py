import torch
from torch import nn

from sft.models.tta import FlipAverage, FlipMergedBoxes


def test_logits_are_averaged_over_the_image_and_its_mirror_image():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 6, 5))  # not mirror-symmetric
    x = torch.randn(2, 3, 4, 6)
    expected = (model(x) + model(x.flip(-1))) / 2
    assert torch.allclose(FlipAverage(model)(x), expected)
    assert not torch.allclose(FlipAverage(model)(x), model(x))


def test_per_pixel_logits_are_mirrored_back_before_averaging():
    x = torch.randn(2, 3, 4, 6)
    assert torch.equal(FlipAverage(nn.Identity(), dense=True)(x), x)  # each pixel keeps its own place
    shift = nn.Conv2d(3, 3, (1, 3), padding=(0, 1), bias=False)
    with torch.no_grad():  # each pixel sees its left neighbour; mirrored, its right one
        shift.weight.zero_()
        shift.weight[range(3), range(3), 0, 0] = 1
    got = FlipAverage(shift, dense=True)(x)
    left = torch.nn.functional.pad(x, (1, 0))[..., :-1]
    right = torch.nn.functional.pad(x, (0, 1))[..., 1:]
    assert torch.allclose(got, (left + right) / 2)


class OneBox(nn.Module):
    """A detector that sees a box at the image's left edge, 10 px wide, and one at its centre."""

    def forward(self, x):
        w = x.shape[-1]
        boxes = torch.tensor([[0.0, 0, 10, 10], [w / 2 - 5, 0, w / 2 + 5, 10]])
        return [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])} for _ in x]


def test_mirrored_boxes_are_mirrored_back_and_merged_by_nms():
    found = FlipMergedBoxes(OneBox(), iou=0.5, keep=100)(torch.zeros(2, 3, 32, 64))
    assert len(found) == 2
    boxes = sorted(found[0]["boxes"].tolist())
    # the edge box from each view (left, and the mirror's mirrored back to the right), the centre box once
    assert boxes == [[0.0, 0.0, 10.0, 10.0], [27.0, 0.0, 37.0, 10.0], [54.0, 0.0, 64.0, 10.0]]
    assert FlipMergedBoxes(OneBox(), iou=0.5, keep=2)(torch.zeros(1, 3, 32, 64))[0]["boxes"].shape == (2, 4)
