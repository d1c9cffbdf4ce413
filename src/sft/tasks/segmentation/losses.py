"""Per-pixel losses that never count ignored pixels: cross-entropy, Dice, focal, and CE + Dice.

The Dice term is segmentation_models_pytorch's multiclass soft Dice (smooth 0, a class absent from the batch's targets
adds 0 to the mean over classes), computed without its one-hot target: smp builds a (B, C, H*W) one-hot and
multiplies it into the probabilities, which on a CPU took as long as a third of the model's forward pass (16 canvases
of 128 px, 11 classes). Here each pixel adds its true class's probability by index, and the sums over pixels are one
contraction; CE + Dice share one log-softmax. Focal stays smp's.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import FocalLoss
from torch import nn


def soft_dice_loss(log_probs: torch.Tensor, target: torch.Tensor, ignore_index: int, eps: float = 1e-7) -> torch.Tensor:
    """1 - Dice per class, from log-probabilities (B, C, H, W) and class indices (B, H, W), averaged over classes;
    classes without target pixels in the batch count 0 (smp's DiceLoss("multiclass"))."""
    classes = log_probs.shape[1]
    probs = log_probs.exp()
    valid = target != ignore_index
    index = torch.where(valid, target, 0)
    truth = probs.gather(1, index.unsqueeze(1)).squeeze(1) * valid  # each pixel's probability of its own class
    intersection = torch.zeros(classes, dtype=probs.dtype, device=probs.device).index_add_(
        0, index.flatten(), truth.flatten())
    counts = torch.bincount(index[valid], minlength=classes).to(probs.dtype)
    cardinality = torch.einsum("bchw,bhw->c", probs, valid.to(probs.dtype)) + counts
    dice = 2 * intersection / cardinality.clamp_min(eps)
    return ((1 - dice) * (counts > 0)).mean()


class PixelLoss(nn.Module):
    """The recipe's optim.loss (cross-entropy, dice, focal or ce+dice) over the pixels that are not ignore_index."""

    def __init__(self, kind: str, ignore_index: int, weight: torch.Tensor | None = None):
        super().__init__()
        self.kind, self.ignore_index = kind, ignore_index
        self.ce = nn.NLLLoss(weight=weight, ignore_index=ignore_index)  # on the shared log-softmax
        self.focal = FocalLoss("multiclass", ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "focal":
            return self.focal(logits, target)
        log_probs = logits.log_softmax(1)
        if self.kind == "dice":
            return soft_dice_loss(log_probs, target, self.ignore_index)
        loss = self.ce(log_probs, target)
        if self.kind == "ce+dice":
            loss = loss + soft_dice_loss(log_probs, target, self.ignore_index)
        return loss
