"""The segmentation model and its LightningModule: an smp decoder and head on the backbone's feature maps, a per-pixel
loss that never counts ignored pixels, and mIoU monitored as val_miou.

segmentation_models_pytorch's decoders take the encoder's maps with the input itself first (stride 1); sft's
backbones give the maps at strides 2..32, so any shipped or timm/torchvision encoder (and its freezing groups) drives
them. DeepLabV3+ is built for an output stride of 16; a stride-32 encoder gets the matching upsampling.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base.initialization import initialize_decoder, initialize_head
from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from sft.data.splits import Splits
from sft.errors import UserError
from sft.models.backbone import Backbone
from sft.tasks.segmentation.starting_weights import load_segmentation_start
from sft.tasks.segmentation.data import label_table, palette_lookup, read_mask
from sft.tasks.segmentation.losses import PixelLoss
from sft.tasks.segmentation.metrics import ConfusionMatrix, scores
from sft.tasks.segmentation.recipe import SegmentationRecipe
from sft.training.module import FineTuneModule
from sft.training.strategies import Schedule

# The narrowest Unet block (smp's own last width). Halving further starved the classifier: a 128-wide decoder ended
# in 8 channels, a 64-wide one in 4, for 11 classes, and the bench's runs learned the background and little else.
UNET_MIN_WIDTH = 16
log = logging.getLogger("sft")


class DecoderHead(nn.Module):
    """decoder + 1x1/3x3 classifier, from the list of maps (input first) to logits at the input size."""

    def __init__(self, kind: str, channels: list[int], reductions: list[int], num_classes: int, width: int = 256):
        super().__init__()
        encoder_channels = [3, *channels]
        if kind == "unet":
            floor = min(width, UNET_MIN_WIDTH)
            widths = [max(width // 2 ** i, floor) for i in range(len(channels))]
            self.decoder = UnetDecoder(encoder_channels, widths, n_blocks=len(channels))
            self.head = SegmentationHead(widths[-1], num_classes, kernel_size=3)
            self._initialize()
            return
        if reductions != [2, 4, 8, 16, 32]:
            raise UserError(f"decoder {kind} needs feature maps at strides 2, 4, 8, 16, 32; this backbone gives "
                            f"{reductions}: use model.decoder=unet")
        if kind == "fpn":
            self.decoder = FPNDecoder(encoder_channels, encoder_depth=5, pyramid_channels=width,
                                      segmentation_channels=max(width // 2, 4), dropout=0.2, merge_policy="add")
            self.head = SegmentationHead(self.decoder.out_channels, num_classes, kernel_size=1, upsampling=4)
            self._initialize()
            return
        self.decoder = DeepLabV3PlusDecoder(encoder_channels, encoder_depth=5, out_channels=width,
                                            atrous_rates=(12, 24, 36), output_stride=16, aspp_separable=True,
                                            aspp_dropout=0.5)
        self.decoder.up = nn.Upsample(scale_factor=reductions[-1] // reductions[1], mode="bilinear",
                                      align_corners=True)  # stride 32 -> the stride-4 map it joins
        self.head = SegmentationHead(width, num_classes, kernel_size=1, upsampling=reductions[1])
        self._initialize()

    def _initialize(self) -> None:
        """smp's own initialisation of its models' decoders and heads (Kaiming / Xavier), not PyTorch's defaults."""
        initialize_decoder(self.decoder)
        initialize_head(self.head)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.decoder(maps))


def segment(backbone: nn.Module, head: nn.Module, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Logits (B, C, H, W) of images (B, 3, H, W)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return head([x, *backbone(x)])


def pixel_class_weights(splits: Splits, ignore_index: int, palette, label_map=None) -> torch.Tensor:
    """Inverse pixel frequency of each class in train (n / (C * count_c)); classes without pixels weigh 0."""
    lookup = palette_lookup(palette, splits.classes) if palette else None
    table = label_table(label_map, ignore_index)
    n = len(splits.classes)
    counts = np.zeros(n, dtype=np.int64)
    for _, mask in splits.train.items:
        values = read_mask(mask, lookup, table=table)
        counts += np.bincount(values[values != ignore_index].ravel(), minlength=n)[:n]
    weights = np.where(counts > 0, counts.sum() / (n * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class Segmenter(FineTuneModule):
    def __init__(self, backbone: Backbone, splits: Splits, schedule: Schedule, recipe: SegmentationRecipe,
                 channels_last: bool = False):
        classes, d = splits.classes, recipe.data
        head = DecoderHead(recipe.model.decoder, backbone.channels, backbone.reductions, len(classes),
                           recipe.model.decoder_channels)
        if recipe.model.checkpoint:
            c = load_segmentation_start(backbone.module, head, recipe.model.checkpoint, backbone.name)
            log.info(f"model.checkpoint {c['source']} ({c['format']}): {c['encoder']} encoder and {c['decoder']} "
                     f"decoder tensors loaded; the classifier " + ("too" if c["classifier"] else "left as initialised "
                     "(another class count)") + (f"; not used: {', '.join(c['skipped'][:6])}" if c["skipped"] else ""))
        super().__init__(backbone.module, head, schedule, recipe.optim, recipe.trainer.epochs, channels_last)
        self.classes = classes
        weight = (pixel_class_weights(splits, d.ignore_index, d.palette, d.label_map)
                  if d.class_weights == "inverse" else None)
        self.loss_fn = PixelLoss(recipe.optim.loss, d.ignore_index, weight)
        self.val_matrix = ConfusionMatrix(len(classes), d.ignore_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return segment(self.backbone, self.head, x, self.channels_last)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x).float()
        self.val_matrix.update(logits, y)
        self.log("val_loss", self.loss_fn(logits, y), prog_bar=True, sync_dist=True, batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        self.log("val_miou", scores(self.val_matrix.compute())["miou"], prog_bar=True)
        self.val_matrix.reset()

    def checkpoint_facts(self) -> dict:
        return {"classes": self.classes}
