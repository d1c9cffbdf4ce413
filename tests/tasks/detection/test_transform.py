import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from sft.tasks.detection.transform import SquareBatchTransform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.mark.parametrize("size", [64, 72])  # 72: torchvision pads it to 96, so the batch takes torchvision's steps
@pytest.mark.parametrize("training", [True, False])
def test_a_stacked_batch_gives_torchvisions_image_list_and_targets(size, training):
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    targets = [{"boxes": torch.tensor([[1.0, 2, 30, 40]]), "labels": torch.tensor([2])} for _ in range(3)]
    theirs = GeneralizedRCNNTransform(size, size, MEAN, STD).train(training)
    ours = SquareBatchTransform(size, size, MEAN, STD).train(training)
    expected, expected_targets = theirs(list(images), targets)
    got, got_targets = ours(images, targets)
    assert got.tensors.shape == expected.tensors.shape and got.image_sizes == expected.image_sizes
    torch.testing.assert_close(got.tensors, expected.tensors)
    for g, e, t in zip(got_targets, expected_targets, targets):
        assert g.keys() == e.keys() and all(torch.equal(g[k], e[k]) for k in g) and g is not t


def test_a_list_or_another_size_takes_torchvisions_steps():
    ours, theirs = SquareBatchTransform(64, 64, MEAN, STD).eval(), GeneralizedRCNNTransform(64, 64, MEAN, STD).eval()
    images = [torch.rand(3, 50, 80), torch.rand(3, 64, 64)]
    got, expected = ours(images)[0], theirs(images)[0]
    assert got.image_sizes == expected.image_sizes == [(40, 64), (64, 64)]
    torch.testing.assert_close(got.tensors, expected.tensors)
