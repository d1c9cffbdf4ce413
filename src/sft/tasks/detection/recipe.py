"""The detection recipe: the vision sections plus the box formats (COCO, YOLO), the detector, its FPN and anchors;
every strategy that trains a head (no LoRA, no feature cache)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sft.recipe import HeadFirst, Recipe, Source, Strategy, VisionData, VisionModel, VisionTrainer


class DetectionSource(Source):
    path: str = Field(description="COCO: an instances .json (images beside it) or a folder holding one; YOLO: a "
                                   "folder with images/ and labels/*.txt")
    format: Literal["auto", "coco", "yolo"] = Field(
        "auto", description="auto: a .json or a folder with one .json is COCO, a folder with labels/ is YOLO")


class DetectionData(VisionData[DetectionSource]):
    classes: list[str] | None = Field(
        None, description="class names in label order; default: COCO categories, or YOLO's classes.txt/data.yaml")
    image_size: int | None = Field(None, gt=0, description="images are resized to this square side (the detector's "
                                                           "own resize is set to match); default: the backbone's")
    batch_size: int = Field(8, gt=0, description="images per step and process")


class DetectionModel(VisionModel):
    detector: Literal["fcos", "retinanet", "fasterrcnn", "ssdlite"] = Field(
        "fcos", description="torchvision detector on the backbone's FPN (heads sized from the classes); "
                            "ssdlite: the lightest heads")
    fpn_channels: int = Field(128, ge=64, multiple_of=32, description="width of the FPN and the heads "
                                                                      "(torchvision: 256)")
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
