"""The detectors' input transform, for the batches sft gives them: a stacked (B, 3, S, S) tensor already at the
recipe's size.

torchvision's GeneralizedRCNNTransform normalises each image on its own, resizes each with a bilinear interpolation
even when the scale is 1, and copies each into a new padded batch, a visible share of a small detector's CPU step.
Such a batch gives the same ImageList by one normalisation of the whole tensor;
anything else (a list, another size, a size the batch would pad, ONNX tracing) takes torchvision's steps.
"""

from __future__ import annotations

import torch
import torchvision
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class SquareBatchTransform(GeneralizedRCNNTransform):
    """torchvision's transform, with one normalisation of the whole batch where that is all its steps would do."""

    def only_normalises(self, images) -> bool:
        """Whether torchvision's steps would give `images` back unchanged but normalised: one stacked batch at the
        one size this transform resizes to, which its batching does not pad, and no ONNX tracing."""
        size = tuple(self.fixed_size or (self.min_size[-1], self.max_size))
        return (isinstance(images, torch.Tensor) and images.dim() == 4 and tuple(images.shape[-2:]) == size
                and size[0] == size[1] and len(self.min_size) == 1 and size[0] % self.size_divisible == 0
                and not torchvision._is_tracing())

    def forward(self, images, targets=None):
        if not self.only_normalises(images):
            return super().forward(list(images), targets)
        mean = torch.as_tensor(self.image_mean, dtype=images.dtype, device=images.device)[:, None, None]
        std = torch.as_tensor(self.image_std, dtype=images.dtype, device=images.device)[:, None, None]
        targets = None if targets is None else [dict(t) for t in targets]  # torchvision's copy: callers' dicts kept
        return ImageList((images - mean) / std, [tuple(images.shape[-2:])] * len(images)), targets


def square_batches(detector: torch.nn.Module) -> torch.nn.Module:
    """The detector with its transform replaced by SquareBatchTransform of the same settings."""
    t = detector.transform
    detector.transform = SquareBatchTransform(t.min_size, t.max_size, t.image_mean, t.image_std,
                                              size_divisible=t.size_divisible, fixed_size=t.fixed_size,
                                              _skip_resize=t._skip_resize)
    return detector
