"""The multi-label losses: the asymmetric loss without focusing or clipping is binary cross-entropy, its clip makes
easy negatives free, and pos_weight auto weighs each label's positives by its negatives/positives ratio."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sft.tasks.multilabel.module import AsymmetricLoss, positive_weights, present_mean


def test_the_asymmetric_loss_is_bce_without_focusing_and_ignores_easy_negatives():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(16, 5, generator=g), (torch.rand(16, 5, generator=g) < 0.3).float()
    plain = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(logits, y)
    assert plain.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, y).item(), rel=1e-5)
    easy = torch.full((4, 3), -6.0)  # negatives of probability 0.0025 < clip
    assert AsymmetricLoss(4, 0, 0.05)(easy, torch.zeros(4, 3)).item() == 0.0


def test_auto_positive_weights_and_the_mean_over_present_labels():
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)
    assert positive_weights(targets).tolist() == pytest.approx([1 / 3, 3.0, 1.0])
    assert present_mean(torch.tensor([0.5, 0.0, 1.0])).item() == pytest.approx(0.75)
