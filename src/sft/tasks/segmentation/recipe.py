"""The segmentation recipe: the vision sections plus masks (ignore index, palette), the decoder and the loss; every
strategy that trains a head (no LoRA, no feature cache: the decoder trains on feature maps)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from sft.recipe import HeadFirst, Optim, Recipe, Source, Strategy, VisionData, VisionModel, VisionTrainer


class SegmentationSource(Source):
    path: str = Field(description="a folder with images/ and masks/ (the same file names), or a CSV manifest "
                                  "(image,mask)")
    format: Literal["auto", "folder", "csv"] = Field("auto", description="how to read `path`")


class SegmentationData(VisionData[SegmentationSource]):
    classes: list[str] | None = Field(None, description="class names in mask-value order; default: classes.txt "
                                                        "beside the training data")
    ignore_index: int = Field(255, ge=0, le=255, description="mask value of pixels that count for nothing (borders, "
                                                             "unlabelled)")
    palette: dict[str, list[int]] | None = Field(
        None, description="RGB masks: {class: [r, g, b]} for every class (index masks need none)")
    class_weights: Literal["none", "inverse"] = Field(
        "none", description="inverse: weight the loss by inverse pixel frequency of each class in train")

    @field_validator("palette")
    @classmethod
    def _rgb(cls, value):
        for name, rgb in (value or {}).items():
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                raise ValueError(f"{name}: expected [r, g, b] with values 0..255, got {rgb}")
        return value


class SegmentationModel(VisionModel):
    decoder: Literal["unet", "fpn", "deeplabv3plus"] = Field(
        "unet", description="segmentation_models_pytorch decoder on the backbone's feature maps")
    decoder_channels: int = Field(256, ge=8, description="decoder width: unet's first block, fpn's pyramid (a "
                                                         "multiple of 64), deeplabv3plus's ASPP")
    checkpoint: str | None = Field(None, description="a whole model to start from: an sft run's model.safetensors "
                                                     "or an smp state dict of the same encoder and decoder")

    @field_validator("decoder_channels")
    @classmethod
    def _fpn_groups(cls, value: int, info: ValidationInfo) -> int:
        """smp's FPN normalises its segmentation blocks (half the pyramid's width) in 32 GroupNorm groups."""
        if info.data.get("decoder") == "fpn" and value % 64:
            raise ValueError("the fpn decoder needs a multiple of 64 (its segmentation blocks are half as wide, in 32 "
                             "GroupNorm groups): 64, 128 or 256")
        return value


class SegmentationStrategy(HeadFirst, Strategy):
    name: Literal["linear-probe", "full", "partial", "two-stage", "gradual"] = Field(
        "two-stage", description="which encoder groups (the backbone's own stages) train when; the decoder always "
                                 "trains")


class SegmentationOptim(Optim):
    loss: Literal["cross-entropy", "dice", "focal", "ce+dice"] = Field(
        "cross-entropy", description="per-pixel loss; ignore_index pixels never count")


class SegmentationRecipe(Recipe):
    data: SegmentationData = Field(default_factory=SegmentationData)
    model: SegmentationModel = Field(default_factory=SegmentationModel)
    strategy: SegmentationStrategy = Field(default_factory=SegmentationStrategy)
    optim: SegmentationOptim = Field(default_factory=SegmentationOptim)
    trainer: VisionTrainer = Field(default_factory=VisionTrainer)
