"""The multi-label recipes: image and text sections of a new pooled head, with how a manifest gives each sample's
labels (one delimited column, or one 0/1 column per class), the class list, whether a sample may have none, and the
loss (binary cross-entropy with an optional positive weight per label, or the asymmetric loss). No `strategy: auto`
(its LogME score is a single-label classifier's)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sft.recipe import (Data, FeatureCache, HeadFirst, ImageData, Lora, Optim, Recipe, Section, Source, Strategy,
                        TextColumns, TextHeadModel, VisionHeadModel, VisionTrainer)

STRATEGY_HELP = "which backbone groups train when (linear-probe: one-vs-rest logistic regression on features)"
FORMAT_HELP = "how to read `path`; auto: by its suffix"


class ImageMultilabelSource(Source):
    path: str = Field(description="a CSV, TSV or JSONL manifest: an image path column (relative to the manifest) "
                                  "and the labels")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field("auto", description=FORMAT_HELP)


class TextMultilabelSource(Source):
    path: str = Field(description="a CSV, TSV or JSONL file: a text column and the labels")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field("auto", description=FORMAT_HELP)


class Labels(Section):
    """Where each sample's labels are, and which labels there are."""
    label_column: str = Field("labels", description="the column holding each sample's labels as one delimited list "
                                                    "(a JSONL list works too)")
    label_delimiter: str = Field("|", min_length=1, description="what separates the labels in label_column")
    label_columns: list[str] | None = Field(None, min_length=1, description="instead of label_column: one 0/1 "
                                                                            "column per class, named by it")
    classes: list[str] | None = Field(None, min_length=1, description="the labels in output order; default: the "
                                                                      "sorted union of the training split's labels")
    allow_empty: bool = Field(False, description="accept samples with no label at all (else each is an error)")


class ImageMultilabelData(Labels, ImageData[ImageMultilabelSource]):
    path_column: str = Field("path", description="the column of the image file")


class TextMultilabelData(Labels, TextColumns, Data[TextMultilabelSource]):
    group_by_length: bool = Field(True, description="batches of similar token length (less padding)")


class ImageMultilabelStrategy(FeatureCache, HeadFirst, Strategy):
    name: Literal["linear-probe", "full", "partial", "two-stage", "gradual"] = Field(
        "two-stage", description=STRATEGY_HELP)


class TextMultilabelStrategy(FeatureCache, Lora, HeadFirst, Strategy):
    name: Literal["linear-probe", "full", "partial", "two-stage", "gradual", "lora"] = Field(
        "two-stage", description=STRATEGY_HELP + "; lora: low-rank adapters")


class MultilabelOptim(Optim):
    loss: Literal["bce", "asymmetric"] = Field("bce", description="bce: binary cross-entropy per label; asymmetric: "
                                                                  "ASL (Ridnik et al. 2021), easy negatives "
                                                                  "down-weighted")
    pos_weight: Literal["none", "auto"] = Field("none", description="bce: auto weighs each label's positives by its "
                                                                    "negatives/positives on the training split "
                                                                    "(at most 100)")
    gamma_neg: float = Field(4.0, ge=0, description="asymmetric: focusing of the negatives")
    gamma_pos: float = Field(0.0, ge=0, description="asymmetric: focusing of the positives")
    clip: float = Field(0.05, ge=0, lt=1, description="asymmetric: probability margin shifted off the negatives")


class ImageMultilabelRecipe(Recipe):
    data: ImageMultilabelData = Field(default_factory=ImageMultilabelData)
    model: VisionHeadModel = Field(default_factory=VisionHeadModel)
    strategy: ImageMultilabelStrategy = Field(default_factory=ImageMultilabelStrategy)
    optim: MultilabelOptim = Field(default_factory=MultilabelOptim)
    trainer: VisionTrainer = Field(default_factory=VisionTrainer)


class TextMultilabelRecipe(Recipe):
    data: TextMultilabelData = Field(default_factory=TextMultilabelData)
    model: TextHeadModel = Field(default_factory=TextHeadModel)
    strategy: TextMultilabelStrategy = Field(default_factory=TextMultilabelStrategy)
    optim: MultilabelOptim = Field(default_factory=MultilabelOptim)


MultilabelRecipe = ImageMultilabelRecipe | TextMultilabelRecipe
