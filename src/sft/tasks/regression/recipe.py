"""The regression recipes: image regression on the image sections, text regression on the text ones, both with the
target columns, their standardisation, the loss, head dropout, the feature cache and the strategies of a new head
(texts add LoRA). No `strategy: auto` (its LogME score is a classifier's) and no augmentation by default: flips and
crops change angles, counts and sizes, which are what a regression often predicts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sft.recipe import (Data, FeatureCache, HeadFirst, ImageData, Lora, Optim, Recipe, Section, Source, Strategy,
                        TextColumns, TextHeadModel, VisionHeadModel, VisionTrainer)

STRATEGY_HELP = "which backbone groups train when (linear-probe: a ridge regression on the cached features)"
FORMAT_HELP = "how to read `path`; auto: by its suffix"


class ImageRegressionSource(Source):
    path: str = Field(description="a CSV, TSV or JSONL manifest: an image path column (relative to the manifest) "
                                  "and the target columns")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field("auto", description=FORMAT_HELP)


class TextRegressionSource(Source):
    path: str = Field(description="a CSV, TSV or JSONL file: a text column and the target columns")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field("auto", description=FORMAT_HELP)


class Targets(Section):
    """The numbers each sample has."""
    target_columns: list[str] = Field(["target"], min_length=1, description="the numeric columns to predict, one "
                                                                            "head output each")
    standardize: bool = Field(True, description="train on z-scores of the targets (mean and std of the training "
                                                "split, stored in model.json and undone in every output)")


class ImageRegressionData(Targets, ImageData[ImageRegressionSource]):
    path_column: str = Field("path", description="the column of the image file")
    augment: Literal["none", "light", "strong"] = Field(
        "none", description="none: resize only; light: crop + flip; strong: + colour. Only for targets these keep "
                            "(not angles, counts, sizes)")


class TextRegressionData(Targets, TextColumns, Data[TextRegressionSource]):
    group_by_length: bool = Field(True, description="batches of similar token length (less padding)")


class ImageRegressionStrategy(FeatureCache, HeadFirst, Strategy):
    name: Literal["linear-probe", "full", "partial", "two-stage", "gradual"] = Field(
        "two-stage", description=STRATEGY_HELP)


class TextRegressionStrategy(FeatureCache, Lora, HeadFirst, Strategy):
    name: Literal["linear-probe", "full", "partial", "two-stage", "gradual", "lora"] = Field(
        "two-stage", description=STRATEGY_HELP + "; lora: low-rank adapters")


class RegressionOptim(Optim):
    loss: Literal["mse", "huber", "l1"] = Field("huber", description="on the (standardised) targets: huber "
                                                                     "(quadratic within huber_delta), mse, l1")
    huber_delta: float = Field(1.0, gt=0, description="huber: where the loss turns linear, in target units "
                                                      "(standard deviations when standardised)")


class ImageRegressionRecipe(Recipe):
    data: ImageRegressionData = Field(default_factory=ImageRegressionData)
    model: VisionHeadModel = Field(default_factory=VisionHeadModel)
    strategy: ImageRegressionStrategy = Field(default_factory=ImageRegressionStrategy)
    optim: RegressionOptim = Field(default_factory=RegressionOptim)
    trainer: VisionTrainer = Field(default_factory=VisionTrainer)


class TextRegressionRecipe(Recipe):
    data: TextRegressionData = Field(default_factory=TextRegressionData)
    model: TextHeadModel = Field(default_factory=TextHeadModel)
    strategy: TextRegressionStrategy = Field(default_factory=TextRegressionStrategy)
    optim: RegressionOptim = Field(default_factory=RegressionOptim)


RegressionRecipe = ImageRegressionRecipe | TextRegressionRecipe
