"""The classification recipe: the shared sections plus classification's own keys (imbalance, label corrections, text
columns and lengths, pooling, head dropout, the loss)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sft.data.sampling import SAMPLER_MODES
from sft.recipe import Data, Model, Optim, Recipe

TEXT = "text-classification"


class ClassificationData(Data):
    balance: Literal["none", "class-weights", "oversample", "undersample"] = Field(
        "none", description="imbalanced classes: weight the loss, or draw class-balanced epochs (works under DDP)")
    class_weights: Literal["inverse", "effective"] | dict[str, float] = Field(
        "inverse", description="class-weights: inverse frequency, effective number of samples, or {class: weight}")
    exclude: str | None = Field(None, description="CSV with a `sample` column (e.g. sft audit's suspects.csv): "
                                                   "train and validate without those samples")
    relabel: str | None = Field(None, description="CSV with `sample` and `label` (or `suggested_label`) columns: "
                                                   "corrected labels")
    text_column: str = Field("text", description="texts: the column (CSV/TSV header or JSONL key) of the text")
    text_pair_column: str | None = Field(None, description="texts: a second text column, for sentence pairs")
    label_column: str = Field("label", description="texts: the column of the label")
    max_length: int = Field(128, gt=0, description="texts: tokens per text; longer ones are truncated and counted")
    group_by_length: bool = Field(
        False, description="texts: training batches of similar token length, so they pad less; on by default for "
                           "texts unless balance over/undersamples (it has its own sampler)")

    @field_validator("group_by_length")
    @classmethod
    def _one_training_sampler(cls, value: bool, info: ValidationInfo) -> bool:
        balance = info.data.get("balance")
        if value and balance in SAMPLER_MODES:
            raise ValueError(f"data.balance={balance} draws the training batches with its own sampler; set "
                             f"data.group_by_length=false, or data.balance=class-weights to keep grouping")
        return value


class ClassificationModel(Model):
    pooling: Literal["mean", "cls"] = Field("mean", description="texts: how token states become one vector")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the new head")


class ClassificationOptim(Optim):
    loss: Literal["cross-entropy", "focal"] = Field("cross-entropy", description="focal: down-weights easy samples")
    focal_gamma: float = Field(2.0, ge=0, description="focal loss gamma (0 = cross-entropy)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the loss")


class ClassificationRecipe(Recipe):
    data: ClassificationData = Field(default_factory=ClassificationData)
    model: ClassificationModel = Field(default_factory=ClassificationModel)
    optim: ClassificationOptim = Field(default_factory=ClassificationOptim)

    @model_validator(mode="after")
    def _text_defaults(self) -> "ClassificationRecipe":
        """A text recipe that names no backbone gets the shipped MiniLM with its pretrained weights, and batches
        grouped by length unless data.balance draws them."""
        if self.task == TEXT:
            if "backbone" not in self.model.model_fields_set:
                self.model.backbone = "minilm"
            if "weights" not in self.model.model_fields_set:
                self.model.weights = "pretrained"
            if "group_by_length" not in self.data.model_fields_set:
                self.data.group_by_length = self.data.balance not in SAMPLER_MODES
        return self
