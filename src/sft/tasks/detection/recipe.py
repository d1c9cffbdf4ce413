"""The detection recipe: the shared sections plus the box formats (COCO, YOLO), the detector, its FPN and anchors."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sft.recipe import Data, Model, Recipe, Source, Trainer


class DetectionSource(Source):
    path: str = Field(description="COCO: an instances .json (images beside it) or a folder holding one; YOLO: a "
                                   "folder with images/ and labels/*.txt")
    format: Literal["auto", "coco", "yolo"] = Field(
        "auto", description="auto: a .json or a folder with one .json is COCO, a folder with labels/ is YOLO")


class DetectionData(Data):
    train: DetectionSource | None = Field(None, description="training data (required); a path or {path, format}")
    val: DetectionSource | None = Field(None, description="validation data; default: a seeded share of train")
    test: DetectionSource | None = Field(None, description="test data, evaluated once with the best checkpoint")
    classes: list[str] | None = Field(
        None, description="class names in label order; default: COCO categories, or YOLO's classes.txt/data.yaml")
    image_size: int | None = Field(None, gt=0, description="images are resized to this square side (the detector's "
                                                           "own resize is set to match); default: the backbone's")
    batch_size: int = Field(8, gt=0, description="images per step and process")


class DetectionModel(Model):
    detector: Literal["fcos", "retinanet", "fasterrcnn", "ssdlite"] = Field(
        "fcos", description="torchvision detector on the backbone's FPN (heads sized from the classes); "
                            "ssdlite: the lightest heads")
    fpn_channels: int = Field(128, ge=64, multiple_of=32, description="width of the FPN and the heads (torchvision: "
                                                                      "256); FCOS's and RetinaNet's heads use 32 "
                                                                      "GroupNorm groups; Faster R-CNN's box head is "
                                                                      "1024 wide from 256 up, else 256")
    anchor_sizes: list[float] | Literal["auto"] = Field(
        "auto", description="the smallest anchor of each FPN level, in input pixels (level k: 2**k times the "
                            "first; Faster R-CNN on a torchvision MobileNetV3: the same on each level); auto: from "
                            "the training boxes (see sft.tasks.detection.module)")
    score_threshold: float = Field(0.05, ge=0, lt=1, description="detections below this score are dropped before "
                                                                 "mAP (predict has its own --score)")
    detections_per_image: int = Field(100, ge=1, description="at most this many detections per image")
    checkpoint: str | None = Field(None, description="a torchvision detector's state dict (.pth/.safetensors, e.g. "
                                                     "COCO-pretrained) or, online, its weights name (e.g. "
                                                     "FCOS_ResNet50_FPN_Weights.COCO_V1, "
                                                     "FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1), loaded "
                                                     "before training: "
                                                     "backbone, FPN and heads; class-sized layers stay initialised")


class DetectionTrainer(Trainer):
    precision: str = Field("32", description="32: an FCOS training step on MobileNetV2 at 128 px ran about 6x "
                                             "slower under CPU bf16 autocast than in fp32 here; bf16-mixed or "
                                             "16-mixed on a GPU, or auto")


class DetectionRecipe(Recipe):
    data: DetectionData = Field(default_factory=DetectionData)
    model: DetectionModel = Field(default_factory=DetectionModel)
    trainer: DetectionTrainer = Field(default_factory=DetectionTrainer)
