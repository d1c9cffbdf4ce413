"""The detector and its LightningModule: sft's backbone in feature-map mode, an FPN on its maps
(torchvision.ops.FeaturePyramidNetwork) and a torchvision detector's heads (FCOS, RetinaNet, Faster R-CNN or SSDLite),
sized from the classes, monitored by val_map50.

Three details decide whether a detector learns at all, so each is set here rather than left to torchvision's 800-px
COCO defaults: the detector's own transform (resize to the recipe's size, the backbone's mean and std), the
background index (classes enter as 1..K and leave as 0..K-1: `to_detector` / `from_detector` alone know it), and
anchors sized from the training boxes (`auto_anchor_sizes`). Faster R-CNN reads the maps torchvision's reads for
that backbone kind (`fpn_levels`), so its COCO files load by name (starting_weights.py). SSDLite runs its head on
the FPN's levels, since sft's backbones end at stride 32.

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
from torchvision.models import MobileNetV3
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
from sft.models.backbone import Backbone, FeatureMaps, Preprocess
from sft.tasks.detection.starting_weights import load_detector_start
from sft.tasks.detection.metrics import mean_ap
from sft.tasks.detection.recipe import DetectionRecipe
from sft.tasks.detection.transform import square_batches
from sft.training.module import FineTuneModule
from sft.training.strategies import Schedule

log = logging.getLogger("sft")
LEVELS = {"fcos": 5, "retinanet": 5, "fasterrcnn": 4, "ssdlite": 4}  # P3-P5 + P6, P7 (or a max-pooled P6)
RESNET = ["layer1", "layer2", "layer3", "layer4"]


def fpn_inputs(kind: str, trunk: nn.Module, channels: list[int]) -> tuple[nn.Module, list[int], str]:
    """(the module whose last maps the FPN reads, their channels, the anchor layout): Faster R-CNN reads the maps
    torchvision's does for a ResNet or a torchvision MobileNetV3, every other case the last three (module docstring)."""
    if len(channels) < 3:
        raise UserError(f"detection needs a backbone with at least three feature maps; this one gives "
                        f"{len(channels)}")
    if kind == "fasterrcnn":
        if list(getattr(trunk, "stages", []))[-4:] == RESNET:
            return trunk, list(channels[-4:]), "resnet"
        model = getattr(trunk, "model", None)
        if isinstance(model, MobileNetV3):  # torchvision's _mobilenet_extractor, returned_layers [last two stages]
            last = len(model.features) - 1
            strided = [i for i, b in enumerate(model.features) if getattr(b, "_is_cn", False) and i < last][-1]
            maps = FeatureMaps(model, [f"features.{strided}", f"features.{last}"])
            return maps, [model.features[i].out_channels for i in (strided, last)], "mobilenet_v3"
    return trunk, list(channels[-3:]), "default"


def fpn_levels(kind: str, trunk: nn.Module | None, maps: list) -> tuple[int, str]:
    """(the number of FPN levels, i.e. of anchor sizes, the anchor layout) of `kind` on the trunk (None: the last
    three maps' rule) whose maps `maps` lists (their channels or reductions)."""
    if kind != "fasterrcnn" or trunk is None:
        return LEVELS[kind], "default"
    _, channels, layout = fpn_inputs(kind, trunk, maps)
    return len(channels) + 1, layout


class Pyramid(nn.Module):
    """The trunk's maps (fpn_inputs) through an FPN: what a torchvision detector takes as its `backbone`. The trunk is
    held outside the module tree, so the detector's parameters are the FPN and heads only (the optimizer groups the
    trunk's by the strategy's groups)."""

    def __init__(self, trunk: nn.Module, channels: list[int], out_channels: int, p6p7: bool,
                 channels_last: bool = False):
        super().__init__()
        self._trunk = [trunk]  # a list, not an attribute: not registered as a submodule
        extra = LastLevelP6P7(out_channels, out_channels) if p6p7 else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork(list(channels), out_channels, extra_blocks=extra)
        self.out_channels, self.channels_last, self.count = out_channels, channels_last, len(channels)

    def forward(self, x: torch.Tensor) -> OrderedDict:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        maps = self._trunk[0](x)[-self.count:]
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def auto_anchor_sizes(sides: np.ndarray, detector: str, reductions: list[int],
                      trunk: nn.Module | None = None) -> list[float]:
    """The smallest anchor of each FPN level. The 2nd percentile of the training boxes' sides (sqrt of the area at
    the input size), rounded down to a power of 2^(1/3), is the first level's; each next level doubles it, with three
    scales per level (x1, x2^(1/3), x2^(2/3)) and the ratios 0.5, 1, 2, so every box from that percentile up to 2^5
    times it has an anchor within a sixth of an octave. FCOS keeps the levels' strides (its paper's choice); Faster
    R-CNN's levels and layout follow the `trunk` as torchvision's do (the backbone's module; None: the last three
    maps' rule)."""
    levels, layout = fpn_levels(detector, trunk, reductions)
    if detector == "fcos":
        first = reductions[-3] if len(reductions) >= 3 else 8
        return [float(first * 2 ** k) for k in range(levels)]
    base = float(np.percentile(sides, 2)) if len(sides) else 32.0
    base = 2 ** (math.floor(3 * math.log2(max(base, 4.0))) / 3)
    return [round(base * 2 ** (0 if layout == "mobilenet_v3" else k), 2) for k in range(levels)]


def anchor_generator(detector: str, sizes: list[float], image_size: int,
                     layout: str = "default") -> AnchorGenerator | DefaultBoxGenerator:
    if detector == "fcos":
        return AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * len(sizes))
    if detector == "ssdlite":  # SSD's default boxes: per level s_k and sqrt(s_k s_k+1) square, s_k at 1:2 and 2:1
        scales = [s / image_size for s in [*sizes, 2 * sizes[-1]]]
        return DefaultBoxGenerator([[2]] * len(sizes), scales=scales)
    steps = {"resnet": [1.0], "mobilenet_v3": [2.0 ** i for i in range(5)]}.get(layout,
                                                                           [2 ** (i / 3) for i in range(3)])
    return AnchorGenerator(tuple(tuple(s * f for f in steps) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))


def build_detector(kind: str, trunk: nn.Module, channels: list[int], num_classes: int, *, fpn_channels: int,
                   anchor_sizes: list[float], size: int, preprocess: Preprocess, score_threshold: float,
                   detections: int, channels_last: bool = False) -> nn.Module:
    """A torchvision detector of `num_classes` classes (+ the background) on the trunk's maps, taking a stacked
    batch of S x S images as it is (sft.tasks.detection.transform) or torchvision's list of images."""
    maps, channels, layout = fpn_inputs(kind, trunk, channels)
    p6p7 = kind in ("fcos", "retinanet")
    levels = len(channels) + (2 if p6p7 else 1)
    if len(anchor_sizes) != levels:
        raise UserError(f"model.anchor_sizes: {kind} has {levels} FPN levels on this backbone, got "
                        f"{len(anchor_sizes)} sizes")
    if layout == "mobilenet_v3":  # torchvision's detector builds it with BatchNorm's eps 1e-5, not the classifier's
        for m in maps.modules():  # 1e-3: its files' statistics are read with the eps they were trained with
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-5
    pyramid = Pyramid(maps, channels, fpn_channels, p6p7=p6p7, channels_last=channels_last)
    common = dict(min_size=size, max_size=size, image_mean=list(preprocess.mean), image_std=list(preprocess.std))
    anchors = anchor_generator(kind, anchor_sizes, size, layout)
    if kind == "ssdlite":  # torchvision's SSDLite head (depthwise-separable, BatchNorm) on each FPN level
        head = SSDLiteHead([fpn_channels] * LEVELS[kind], anchors.num_anchors_per_location(), num_classes + 1,
                           partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))
        detector = SSD(pyramid, anchors, (size, size), num_classes + 1, image_mean=list(preprocess.mean),
                       image_std=list(preprocess.std), head=head, score_thresh=score_threshold,
                       detections_per_img=detections, nms_thresh=0.55, topk_candidates=300)
    elif kind == "fcos":
        detector = FCOS(pyramid, num_classes + 1, anchor_generator=anchors, score_thresh=score_threshold,
                        detections_per_img=detections, **common)
    elif kind == "retinanet":
        detector = RetinaNet(pyramid, num_classes + 1, anchor_generator=anchors, score_thresh=score_threshold,
                             detections_per_img=detections, **common)
    else:
        pool = MultiScaleRoIAlign([str(i) for i in range(len(channels))], output_size=7, sampling_ratio=2)
        width = 1024 if fpn_channels >= 256 else 256  # torchvision's on its 256-wide FPN (its COCO box head loads);
        # 256 on narrower ones: at fpn_channels 128 a 512-wide head made a MobileNetV2 step at 96 px 16% slower
        detector = FasterRCNN(pyramid, rpn_anchor_generator=anchors, box_roi_pool=pool,
                              box_head=TwoMLPHead(fpn_channels * 7 * 7, width),
                              box_predictor=FastRCNNPredictor(width, num_classes + 1),
                              box_score_thresh=score_threshold, box_detections_per_img=detections,
                              rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                              rpn_post_nms_top_n_test=150, box_batch_size_per_image=128, **common)
    return square_batches(detector)


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
            c = load_detector_start(backbone.module, head, m.checkpoint, m.detector, backbone.name)
            log.info(f"model.checkpoint {c['source']}: {c['trunk']} backbone and {c['head']} FPN and head tensors "
                     f"loaded; left as initialised: {len(c['class_sized'])} class-sized (another class count)" +
                     (f", {len(c['skipped'])} of another shape or name: {', '.join(c['skipped'][:6])}"
                      if c["skipped"] else ""))
        super().__init__(backbone.module, head, schedule, recipe.optim, recipe.trainer.epochs, channels_last=False)
        self.classes, self.anchor_sizes, self.image_size = splits.classes, list(anchor_sizes), size
        self.val_map = mean_ap()

    def forward(self, x: torch.Tensor) -> list[dict]:
        """Detections (0-based classes) of a batch of S x S images in 0..1."""
        return from_detector(self.head(x))

    def training_step(self, batch, batch_idx):
        x, targets = batch
        losses = self.head(x, to_detector(targets))
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
