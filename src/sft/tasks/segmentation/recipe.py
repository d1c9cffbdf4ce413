"""The segmentation recipe: the vision sections plus masks (ignore index, palette, label map), the decoder and the
loss; every strategy that trains a head (no LoRA, no feature cache: the decoder trains on feature maps).

A VOC or Cityscapes root is read at the split of its key; as `data.train` it fills, when validated, the absent
`data.val` and `data.test` with its own splits, `data.classes` with the layout's class names and (Cityscapes)
`data.label_map` with its 19-class map, so the run's recipe.yaml says exactly what was trained on; a key given
explicitly, even as null, is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sft.data.splits import fill_splits
from sft.recipe import (DenseInput, HeadFirst, Optim, Recipe, Source, Strategy, VisionData, VisionModel,
                        VisionTrainer)
from sft.tasks.segmentation.layouts import dataset_splits, layout_defaults


class SegmentationSource(Source):
    path: str = Field(description="a folder with images/ and masks/, a CSV (image,mask), a VOC or a Cityscapes "
                                  "folder")
    format: Literal["auto", "folder", "csv", "voc", "cityscapes"] = Field(
        "auto", description="auto: .csv manifest, SegmentationClass/ VOC, leftImg8bit/ Cityscapes, else a folder")
    split: Literal["train", "val", "test"] | None = Field(
        None, description="which split of a VOC or Cityscapes root; default: its train split")


class SegmentationData(DenseInput, VisionData[SegmentationSource]):
    classes: list[str] | None = Field(None, description="class names in mask-value order; default: classes.txt "
                                                        "beside the training data")
    ignore_index: int = Field(255, ge=0, le=255, description="mask value of pixels that count for nothing (borders, "
                                                             "unlabelled)")
    palette: dict[str, list[int]] | None = Field(
        None, description="RGB masks: {class: [r, g, b]} for every class (index masks need none)")
    label_map: dict[int, int] | None = Field(
        None, description="{mask id: class index} for every mask, others ignored; Cityscapes: its 19 train ids")
    class_weights: Literal["none", "inverse"] = Field(
        "none", description="inverse: weight the loss by inverse pixel frequency of each class in train")

    @model_validator(mode="before")
    @classmethod
    def _layout_defaults(cls, data: Any) -> Any:
        """A VOC or Cityscapes root is read at the split of its key; as data.train it fills the absent val/test
        splits, classes and label map."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        train = {"path": str(data["train"])} if isinstance(data.get("train"), (str, Path)) else data.get("train")
        if isinstance(train, dict) and isinstance(train.get("path"), str):
            classes, label_map = layout_defaults(train["path"], train.get("format", "auto"))
            if "classes" not in data and classes is not None:
                data["classes"] = classes
            if "label_map" not in data and label_map is not None:
                data["label_map"] = label_map
        return fill_splits(data, lambda path, format: dataset_splits(Path(path), format)
                           if format in ("auto", "voc", "cityscapes") else [])

    @field_validator("label_map")
    @classmethod
    def _train_ids(cls, value):
        for label_id, train_id in (value or {}).items():
            if not 0 <= label_id < 1 << 16 or not 0 <= train_id <= 255:
                raise ValueError(f"{label_id}: {train_id}: expected a mask id 0..65535 and a class index 0..255")
        return value

    @field_validator("label_map")
    @classmethod
    def _not_with_palette(cls, value, info: ValidationInfo):
        if value and info.data.get("palette"):
            raise ValueError("give data.palette (RGB masks) or data.label_map (id masks), not both")
        return value

    @field_validator("palette")
    @classmethod
    def _rgb(cls, value):
        for name, rgb in (value or {}).items():
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                raise ValueError(f"{name}: expected [r, g, b] with values 0..255, got {rgb}")
        return value


class SegmentationModel(VisionModel):
    decoder: Literal["unet", "fpn", "deeplabv3plus"] = Field(
        "fpn", description="segmentation_models_pytorch decoder on the backbone's feature maps")
    decoder_channels: Annotated[int, Field(ge=8)] | Literal["auto"] = Field(
        "auto", description="width: unet's first block, fpn's pyramid (a multiple of 64), deeplabv3plus's ASPP; auto: "
                            "64 on a CPU, 256 on a GPU")
    checkpoint: str | None = Field(None, description="a whole model to start from: an sft run's model.safetensors "
                                                     "or an smp state dict of the same encoder and decoder")

    @field_validator("decoder_channels")
    @classmethod
    def _fpn_groups(cls, value: int | str, info: ValidationInfo) -> int | str:
        """smp's FPN normalises its segmentation blocks (half the pyramid's width) in 32 GroupNorm groups."""
        if info.data.get("decoder") == "fpn" and value != "auto" and value % 64:
            raise ValueError("the fpn decoder needs a multiple of 64 (its segmentation blocks are half as wide, in 32 "
                             "GroupNorm groups): 64, 128 or 256")
        return value


class SegmentationStrategy(HeadFirst, Strategy):
    name: Literal["linear-probe", "full", "partial", "two-stage", "gradual"] = Field(
        "full", description="which encoder groups (the backbone's own stages) train when; the decoder always "
                            "trains")


class SegmentationOptim(Optim):
    loss: Literal["cross-entropy", "dice", "focal", "ce+dice"] = Field(
        "ce+dice", description="per-pixel loss; ignore_index pixels never count")


class SegmentationRecipe(Recipe):
    data: SegmentationData = Field(default_factory=SegmentationData)
    model: SegmentationModel = Field(default_factory=SegmentationModel)
    strategy: SegmentationStrategy = Field(default_factory=SegmentationStrategy)
    optim: SegmentationOptim = Field(default_factory=SegmentationOptim)
    trainer: VisionTrainer = Field(default_factory=VisionTrainer)
