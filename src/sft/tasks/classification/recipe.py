"""The classification recipes: image classification on the vision sections, text classification on the shared ones,
both with the keys of one label per sample (imbalance, label corrections, the loss, head dropout), the feature
cache, and every strategy; texts add their columns, lengths, pooling and LoRA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from sft.data.sampling import SAMPLER_MODES
from sft.recipe import (Data, FeatureCache, HeadFirst, Lora, Optim, Recipe, Section, Source, Strategy, TextColumns,
                        TextHeadModel, VisionData, VisionHeadModel, VisionTrainer)

STRATEGY_HELP = "which backbone groups train when; auto: chosen from the data and the backbone"


class ImageSource(Source):
    path: str = Field(description="a folder (one subfolder per class), a CSV manifest (path,label), IDX or "
                                  ".npz/.npy")
    labels: str | None = Field(None, description="labels file for IDX or .npy images (IDX: derived from the name)")
    format: Literal["auto", "folder", "csv", "idx", "numpy"] = Field("auto", description="how to read `path`")

    @field_validator("format", mode="before")
    @classmethod
    def _not_texts(cls, value):
        if value in ("tsv", "jsonl"):
            raise ValueError(f"format {value} holds texts; set task: text-classification")
        return value


class TextSource(Source):
    path: str = Field(description="a CSV, TSV or JSONL file of texts and labels")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field("auto", description="how to read `path`")


class Labels(Section):
    """One label per sample: imbalance and corrections."""

    balance: Literal["none", "class-weights", "oversample", "undersample"] = Field(
        "none", description="imbalanced classes: weight the loss, or draw class-balanced epochs (works under DDP)")
    class_weights: Literal["inverse", "effective"] | dict[str, float] = Field(
        "inverse", description="class-weights: inverse frequency, effective number of samples, or {class: weight}")
    exclude: str | None = Field(None, description="CSV with a `sample` column (e.g. sft audit's suspects.csv): "
                                                   "train and validate without those samples")
    relabel: str | None = Field(None, description="CSV with `sample` and `label` (or `suggested_label`) columns: "
                                                   "corrected labels")


class ImageClassificationData(Labels, VisionData[ImageSource]):
    classes: list[str] | None = Field(None, description="class names in label order (IDX/numpy labels are indices)")


class TextClassificationData(Labels, TextColumns, Data[TextSource]):
    classes: list[str] | None = Field(None, description="class names in label order; default: the labels found")
    label_column: str = Field("label", description="the column of the label")
    group_by_length: bool | Literal["auto"] = Field(
        "auto", validate_default=True, description="batches of similar token length (less padding); auto: on unless "
                                                   "balance samples")

    @field_validator("group_by_length")
    @classmethod
    def _one_training_sampler(cls, value: bool | str, info: ValidationInfo) -> bool:
        balance = info.data.get("balance")
        if value == "auto":
            return balance not in SAMPLER_MODES
        if value and balance in SAMPLER_MODES:
            raise ValueError(f"data.balance={balance} draws the training batches with its own sampler; set "
                             f"data.group_by_length=false, or data.balance=class-weights to keep grouping")
        return value


class ImageClassificationStrategy(FeatureCache, HeadFirst, Strategy):
    name: Literal["auto", "linear-probe", "full", "partial", "two-stage", "gradual"] = Field(
        "two-stage", description=STRATEGY_HELP)


class TextClassificationStrategy(FeatureCache, Lora, HeadFirst, Strategy):
    name: Literal["auto", "linear-probe", "full", "partial", "two-stage", "gradual", "lora"] = Field(
        "two-stage", description=STRATEGY_HELP + "; lora: low-rank adapters (peft)")


class ClassificationOptim(Optim):
    loss: Literal["cross-entropy", "focal"] = Field("cross-entropy", description="focal: down-weights easy samples")
    focal_gamma: float = Field(2.0, ge=0, description="focal loss gamma (0 = cross-entropy)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the loss")


class ImageClassificationRecipe(Recipe):
    data: ImageClassificationData = Field(default_factory=ImageClassificationData)
    model: VisionHeadModel = Field(default_factory=VisionHeadModel)
    strategy: ImageClassificationStrategy = Field(default_factory=ImageClassificationStrategy)
    optim: ClassificationOptim = Field(default_factory=ClassificationOptim)
    trainer: VisionTrainer = Field(default_factory=VisionTrainer)


class TextClassificationRecipe(Recipe):
    data: TextClassificationData = Field(default_factory=TextClassificationData)
    model: TextHeadModel = Field(default_factory=TextHeadModel)
    strategy: TextClassificationStrategy = Field(default_factory=TextClassificationStrategy)
    optim: ClassificationOptim = Field(default_factory=ClassificationOptim)


ClassificationRecipe = ImageClassificationRecipe | TextClassificationRecipe
