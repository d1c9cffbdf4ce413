"""The detection recipe: the vision sections plus the box formats (COCO, YOLO, Ultralytics data.yaml, Pascal VOC), the
detector, its FPN and anchors; every strategy that trains a head (no LoRA, no feature cache).

A source holding several splits (a data.yaml, a VOC root with ImageSets/Main, a dataset root with split folders) is
read at the split of its key, and as `data.train` it fills the absent `data.val` and `data.test` with its own val and
test splits when validated, so the run's recipe.yaml names every split it used and `sft eval RUN` finds the test
split; a split given explicitly, even as null, is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from sft.data.splits import fill_splits
from sft.recipe import DenseInput, HeadFirst, Recipe, Source, Strategy, VisionData, VisionModel, VisionTrainer
from sft.tasks.detection.layouts import dataset_splits


class DetectionSource(Source):
    path: str = Field(description="a COCO .json, a YOLO / Roboflow folder, images/<split>, a data.yaml or a VOC "
                                  "folder (docs/detection.md)")
    format: Literal["auto", "coco", "yolo", "ultralytics", "voc"] = Field(
        "auto", description="auto: .json COCO, .yaml Ultralytics, Annotations/ VOC, labels/ YOLO")
    split: Literal["train", "val", "test"] | None = Field(
        None, description="the split of a source holding several (data.yaml, VOC, dataset root); default: train")


class DetectionData(DenseInput, VisionData[DetectionSource]):
    classes: list[str] | None = Field(
        None, description="class names in label order; default: COCO categories, or YOLO's classes.txt/data.yaml")
    mosaic: float = Field(0.0, ge=0, le=1, description="share of training images made a mosaic of four "
                                                       "(Ultralytics'), quarters meeting at a random point")
    close_mosaic: int = Field(1, ge=0, description="mosaic: the last N epochs train on plain images (Ultralytics' "
                                                   "close_mosaic)")

    @model_validator(mode="before")
    @classmethod
    def _splits_of_one_source(cls, data: Any) -> Any:
        """A source holding several splits is read at the split of its key; data.train's fills the absent val and
        test keys."""
        if not isinstance(data, dict):
            return data
        return fill_splits(data, lambda path, format: dataset_splits(Path(path), format))


class DetectionModel(VisionModel):
    detector: Literal["fcos", "retinanet", "fasterrcnn", "ssdlite"] = Field(
        "fcos", description="torchvision detector on the backbone's FPN (heads sized from the classes); "
                            "ssdlite: the lightest heads")
    fpn_channels: Annotated[int, Field(ge=64, multiple_of=32)] | Literal["auto"] = Field(
        "auto", description="width of the FPN and the heads; auto: 64 on a CPU, 256 (torchvision's) on a GPU")
    anchor_sizes: list[float] | Literal["auto"] = Field(
        "auto", description="the smallest anchor of each FPN level, in input pixels; auto: from the training boxes")
    score_threshold: float = Field(0.05, ge=0, lt=1, description="detections below this score are dropped before "
                                                                 "mAP (predict has its own --score)")
    detections_per_image: int = Field(100, ge=1, description="at most this many detections per image")
    checkpoint: str | None = Field(None, description="a torchvision detector's state dict file (e.g. COCO) or, "
                                                     "online, its weights name; class-sized layers stay initialised")


class DetectionStrategy(HeadFirst, Strategy):
    name: Literal["linear-probe", "full", "partial", "two-stage", "gradual"] = Field(
        "two-stage", description="which backbone groups train when; the FPN and the heads always train")


class DetectionTrainer(VisionTrainer):
    precision: str = Field("32", description="32 (CPU bf16 autocast is slow for these detectors); bf16-mixed or "
                                             "16-mixed on a GPU, or auto")


class DetectionRecipe(Recipe):
    data: DetectionData = Field(default_factory=DetectionData)
    model: DetectionModel = Field(default_factory=DetectionModel)
    strategy: DetectionStrategy = Field(default_factory=DetectionStrategy)
    trainer: DetectionTrainer = Field(default_factory=DetectionTrainer)

    @model_validator(mode="after")
    def _mosaic_has_epochs(self) -> "DetectionRecipe":
        """A mosaic share with every epoch closed to mosaics would train none, silently."""
        d, epochs = self.data, self.trainer.epochs
        if d.mosaic and d.close_mosaic >= epochs:
            raise ValueError(f"data.mosaic {d.mosaic:g} would make no mosaic: data.close_mosaic {d.close_mosaic} "
                             f"closes all {epochs} epoch(s); lower data.close_mosaic or raise trainer.epochs")
        return self
