import pytest
import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from sft.tasks.segmentation.losses import PixelLoss

IGNORE = 255


def batch(channels_last: bool):
    """Logits and targets with ignored pixels and a class (3) that no target pixel has."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 12, 10, generator=g) * 3
    target = torch.randint(0, 3, (4, 12, 10), generator=g)
    target[:, :2] = IGNORE
    target[0, 5:, 4] = 4
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    return logits, target


def value_and_grad(loss, logits, target):
    x = logits.clone().requires_grad_()
    value = loss(x, target)
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_plus_dice_equals_smps_dice_and_torchs_cross_entropy(channels_last, weighted):
    logits, target = batch(channels_last)
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0, 3.0]) if weighted else None
    ce = nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE)
    dice = DiceLoss("multiclass", ignore_index=IGNORE)
    expected = value_and_grad(lambda x, y: ce(x, y) + dice(x, y), logits, target)
    got = value_and_grad(PixelLoss("ce+dice", IGNORE, weight), logits, target)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


@pytest.mark.parametrize("kind", ["cross-entropy", "dice"])
def test_each_term_alone_equals_its_reference(kind):
    logits, target = batch(False)
    reference = (nn.CrossEntropyLoss(ignore_index=IGNORE) if kind == "cross-entropy"
                 else DiceLoss("multiclass", ignore_index=IGNORE))
    expected = value_and_grad(reference, logits, target)
    got = value_and_grad(PixelLoss(kind, IGNORE), logits, target)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


def test_ignored_pixels_get_no_gradient_and_a_perfect_prediction_scores_zero_dice():
    logits, target = batch(False)
    _, grad = value_and_grad(PixelLoss("dice", IGNORE), logits, target)
    assert grad[:, :, :2].abs().max() == 0
    perfect = nn.functional.one_hot(target.clamp(max=4), 5).permute(0, 3, 1, 2).float() * 100
    assert PixelLoss("dice", IGNORE)(perfect, target) < 1e-6
