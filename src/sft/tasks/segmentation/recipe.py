"""The segmentation recipe: the shared sections plus masks (ignore index, palette), the decoder and the loss."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from sft.recipe import Data, Model, Optim, Recipe


class SegmentationData(Data):
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


class SegmentationModel(Model):
    decoder: Literal["unet", "fpn", "deeplabv3plus"] = Field(
        "unet", description="segmentation_models_pytorch decoder on the backbone's feature maps")
    decoder_channels: int = Field(256, ge=8, description="width of the decoder: unet's first block (each next one "
                                                         "halves, down to 16), fpn's pyramid (a multiple of 64), "
                                                         "deeplabv3plus's ASPP; 256 as smp")
    checkpoint: str | None = Field(None, description="a whole model to start from: a finished sft segmentation run's "
                                                     "model.safetensors or an smp model's state dict with the same "
                                                     "encoder and decoder; a classifier of another class count stays "
                                                     "initialised")

    @field_validator("decoder_channels")
    @classmethod
    def _fpn_groups(cls, value: int, info: ValidationInfo) -> int:
        """smp's FPN normalises its segmentation blocks (half the pyramid's width) in 32 GroupNorm groups."""
        if info.data.get("decoder") == "fpn" and value % 64:
            raise ValueError("the fpn decoder needs a multiple of 64 (its segmentation blocks are half as wide, in 32 "
                             "GroupNorm groups): 64, 128 or 256")
        return value


class SegmentationOptim(Optim):
    loss: Literal["cross-entropy", "dice", "focal", "ce+dice"] = Field(
        "cross-entropy", description="per-pixel loss; ignore_index pixels never count")


class SegmentationRecipe(Recipe):
    data: SegmentationData = Field(default_factory=SegmentationData)
    model: SegmentationModel = Field(default_factory=SegmentationModel)
    optim: SegmentationOptim = Field(default_factory=SegmentationOptim)
