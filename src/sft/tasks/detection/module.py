"""The detector and its LightningModule: sft's backbone in feature-map mode, an FPN on its last three maps
(torchvision.ops.FeaturePyramidNetwork) and a torchvision detector's heads (FCOS, RetinaNet, Faster R-CNN or SSDLite),
sized from the classes, monitored by val_map50. SSDLite here is torchvision's SSD with its SSDLite head
(depthwise-separable convolutions, BatchNorm) on the FPN's four levels, not on torchvision's extra MobileNetV3
layers: sft's backbones give strides 8-32 (MobileNetV2's stride-8 map has 32 channels, too few to classify from
alone), and the FPN gives every level the deeper maps' features.

Three details decide whether a detector learns at all, and each is set here rather than left to torchvision's
800-px COCO defaults:
- the detector's own transform: its resize is set to the recipe's image size (min_size = max_size = S, so the S x S
  inputs pass unchanged; torchvision's default would enlarge them to 800 px) and it normalises with the backbone's
  mean and std (the inputs arrive in 0..1);
- the background index: torchvision's detectors reserve label 0 for the background, so classes enter as 1..K and
  leave as 0..K-1 (`to_detector` / `from_detector`, the only two places that know it);
- anchors: `anchor_sizes` auto takes the 2nd percentile of the training boxes' sides (sqrt of the area, after
  resizing to S) as the first level's smallest anchor, rounded down to a power of 2^(1/3); each next FPN level doubles
  it, and each level has three scales (x1, x2^(1/3), x2^(2/3)) and the aspect ratios 0.5, 1, 2 (RetinaNet, Faster
  R-CNN's RPN), so every box from that percentile up to 2^5 times it has an anchor within a sixth of an octave.
  FCOS places one point per location whose size sets its scale range (4x-8x) and centre-sampling radius, so its
  sizes stay the levels' strides (its paper's choice), unless given. SSDLite's default boxes per location: the
  level's size and sqrt(2) times it (square), and the size at 1:2 and 2:1.

The module's `backbone` is sft's backbone (the groups strategies freeze, its BatchNorm kept in eval mode when frozen);
its `head` is the detector without it (FPN + heads), which calls the backbone without owning it.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from functools import partial

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import (
    AnchorGenerator,
    DefaultBoxGenerator,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from sft.data.splits import Splits
from sft.errors import UserError
from sft.models.backbone import Backbone, Preprocess
from sft.tasks.detection.checkpoint import load_detector_checkpoint
from sft.tasks.detection.metrics import mean_ap
from sft.tasks.detection.recipe import DetectionRecipe
from sft.training.module import FineTuneModule
from sft.training.strategies import Schedule

log = logging.getLogger("sft")
LEVELS = {"fcos": 5, "retinanet": 5, "fasterrcnn": 4, "ssdlite": 4}  # P3-P5 + P6, P7 (or a max-pooled P6)


class Pyramid(nn.Module):
    """The backbone's last three maps (strides 8, 16, 32 for the usual backbones) through an FPN: what a torchvision
    detector takes as its `backbone`. The trunk is held outside the module tree, so the detector's parameters are the
    FPN and heads only (the optimizer groups the trunk's by the strategy's groups)."""

    def __init__(self, trunk: nn.Module, channels: list[int], out_channels: int, p6p7: bool,
                 channels_last: bool = False):
        super().__init__()
        if len(channels) < 3:
            raise UserError(f"detection needs a backbone with at least three feature maps; this one gives "
                            f"{len(channels)}")
        self._trunk = [trunk]  # a list, not an attribute: not registered as a submodule
        extra = LastLevelP6P7(out_channels, out_channels) if p6p7 else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork(list(channels[-3:]), out_channels, extra_blocks=extra)
        self.out_channels, self.channels_last = out_channels, channels_last

    def forward(self, x: torch.Tensor) -> OrderedDict:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        maps = self._trunk[0](x)[-3:]
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def auto_anchor_sizes(sides: np.ndarray, detector: str, reductions: list[int]) -> list[float]:
    """The smallest anchor of each FPN level (see the module docstring)."""
    levels = LEVELS[detector]
    if detector == "fcos":
        first = reductions[-3] if len(reductions) >= 3 else 8
        return [float(first * 2 ** k) for k in range(levels)]
    base = float(np.percentile(sides, 2)) if len(sides) else 32.0
    base = 2 ** (math.floor(3 * math.log2(max(base, 4.0))) / 3)
    return [round(base * 2 ** k, 2) for k in range(levels)]


def anchor_generator(detector: str, sizes: list[float], image_size: int) -> AnchorGenerator | DefaultBoxGenerator:
    if detector == "fcos":
        return AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * len(sizes))
    if detector == "ssdlite":  # SSD's default boxes: per level s_k and sqrt(s_k s_k+1) square, s_k at 1:2 and 2:1
        scales = [s / image_size for s in [*sizes, 2 * sizes[-1]]]
        return DefaultBoxGenerator([[2]] * len(sizes), scales=scales)
    scales = tuple(tuple(s * 2 ** (i / 3) for i in range(3)) for s in sizes)
    return AnchorGenerator(scales, ((0.5, 1.0, 2.0),) * len(sizes))


def build_detector(kind: str, trunk: nn.Module, channels: list[int], num_classes: int, *, fpn_channels: int,
                   anchor_sizes: list[float], size: int, preprocess: Preprocess, score_threshold: float,
                   detections: int, channels_last: bool = False) -> nn.Module:
    """A torchvision detector of `num_classes` classes (+ the background) on the trunk's maps."""
    if len(anchor_sizes) != LEVELS[kind]:
        raise UserError(f"model.anchor_sizes: {kind} has {LEVELS[kind]} FPN levels, got {len(anchor_sizes)} sizes")
    pyramid = Pyramid(trunk, channels, fpn_channels, p6p7=kind in ("fcos", "retinanet"), channels_last=channels_last)
    common = dict(min_size=size, max_size=size, image_mean=list(preprocess.mean), image_std=list(preprocess.std))
    anchors = anchor_generator(kind, anchor_sizes, size)
    if kind == "ssdlite":  # torchvision's SSDLite head (depthwise-separable, BatchNorm) on each FPN level
        head = SSDLiteHead([fpn_channels] * LEVELS[kind], anchors.num_anchors_per_location(), num_classes + 1,
                           partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))
        return SSD(pyramid, anchors, (size, size), num_classes + 1, image_mean=list(preprocess.mean),
                   image_std=list(preprocess.std), head=head, score_thresh=score_threshold,
                   detections_per_img=detections, nms_thresh=0.55, topk_candidates=300)
    if kind == "fcos":
        return FCOS(pyramid, num_classes + 1, anchor_generator=anchors, score_thresh=score_threshold,
                    detections_per_img=detections, **common)
    if kind == "retinanet":
        return RetinaNet(pyramid, num_classes + 1, anchor_generator=anchors, score_thresh=score_threshold,
                         detections_per_img=detections, **common)
    pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
    width = 256  # torchvision's box head is 1024 wide for 800 px images and 91 classes
    return FasterRCNN(pyramid, rpn_anchor_generator=anchors, box_roi_pool=pool,
                      box_head=TwoMLPHead(fpn_channels * 7 * 7, width),
                      box_predictor=FastRCNNPredictor(width, num_classes + 1), box_score_thresh=score_threshold,
                      box_detections_per_img=detections, rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                      rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150, box_batch_size_per_image=128,
                      **common)


def to_detector(targets: list[dict]) -> list[dict]:
    """0-based classes -> torchvision's 1..K (0 is its background)."""
    return [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]


def from_detector(outputs: list[dict]) -> list[dict]:
    """torchvision's detections -> 0-based classes, background detections (label 0) dropped, float32."""
    found = []
    for o in outputs:
        keep = o["labels"] > 0
        found.append({"boxes": o["boxes"][keep].float(), "scores": o["scores"][keep].float(),
                      "labels": o["labels"][keep] - 1})
    return found


class Detector(FineTuneModule):
    def __init__(self, backbone: Backbone, splits: Splits, schedule: Schedule, recipe: DetectionRecipe,
                 size: int, anchor_sizes: list[float], channels_last: bool = False):
        m = recipe.model
        head = build_detector(m.detector, backbone.module, backbone.channels, len(splits.classes),
                              fpn_channels=m.fpn_channels, anchor_sizes=anchor_sizes, size=size,
                              preprocess=backbone.preprocess, score_threshold=m.score_threshold,
                              detections=m.detections_per_image, channels_last=channels_last)
        if m.checkpoint:
            c = load_detector_checkpoint(backbone.module, head, m.checkpoint, m.detector, backbone.name)
            log.info(f"model.checkpoint {c['source']}: {c['trunk']} backbone and {c['head']} FPN and head tensors "
                     f"loaded; left as initialised: {len(c['class_sized'])} class-sized (another class count)" +
                     (f", {len(c['skipped'])} of another shape or name: {', '.join(c['skipped'][:6])}"
                      if c["skipped"] else ""))
        super().__init__(backbone.module, head, schedule, recipe.optim, recipe.trainer.epochs, channels_last=False)
        self.classes, self.anchor_sizes, self.image_size = splits.classes, list(anchor_sizes), size
        self.val_map = mean_ap()

    def forward(self, x: torch.Tensor) -> list[dict]:
        """Detections (0-based classes) of a batch of S x S images in 0..1."""
        return from_detector(self.head(list(x)))

    def training_step(self, batch, batch_idx):
        x, targets = batch
        losses = self.head(list(x), to_detector(targets))
        loss = self.check_finite(sum(v.float() for v in losses.values()))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        for name, value in losses.items():
            self.log(f"train_{name}", value.float(), on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx):
        x, targets = batch
        self.val_map.update(self(x), targets)

    def on_validation_epoch_end(self) -> None:
        result = self.val_map.compute()
        self.log("val_map50", float(result["map_50"]), prog_bar=True)
        self.log("val_map", float(result["map"]), prog_bar=True)
        self.val_map.reset()

    def checkpoint_facts(self) -> dict:
        return {"classes": self.classes}
