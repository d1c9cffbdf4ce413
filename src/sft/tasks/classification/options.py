"""The options of classification's commands on a finished run (`sft predict | eval | export | serve`, image and text
alike) and of its tool `sft rank`, declared as models the way the recipe is: the CLI builds each command's options and
--help from them. Only pydantic here: the CLI reads this module to list `sft rank` without loading any model code."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, Field

from sft.tasks import Tool

ENGINE = "what runs the model: torch, or onnx (the run's `sft export --format onnx`)"
COVERAGE = ("the share of samples whose true class is in their prediction set, between 0 and 1 (e.g. 0.9); the sets "
            "come from the split-conformal fit on the run's validation split that `sft eval` stores")
TTA = ("flip: the model also sees each image mirrored and the logits are averaged (twice the compute); the temperature "
       "and prediction sets are fitted again on the validation split's averaged logits")
DEFAULT_COVERAGE = 0.9  # `sft eval`'s prediction sets
Score = Literal["logme", "hscore", "nce", "leep", "knn_acc", "probe_acc"]  # rank's scores, in its table's order


class PredictOptions(BaseModel):
    top_k: int = Field(1, ge=1, description="the K most probable classes of each input")
    engine: Literal["torch", "onnx"] = Field("torch", description=ENGINE)
    coverage: Optional[float] = Field(None, gt=0, lt=1,
                                      description=f"adds each input's prediction set: {COVERAGE}. Default: no sets")


class EvalOptions(BaseModel):
    top_losses: int = Field(16, ge=0, description="samples of highest loss shown, with Grad-CAM (images) or token "
                                                  "attributions (texts)")
    coverage: Optional[float] = Field(None, gt=0, lt=1,
                                      description=f"{COVERAGE}. metrics.json gives the share reached on the evaluated "
                                                  f"data. Default: {DEFAULT_COVERAGE}, left out with a warning when "
                                                  f"the validation split is too small for it")
    raps_lambda: float = Field(0.0, ge=0, description="RAPS regularisation of the prediction sets: the score added per "
                                                      "class ranked beyond --raps-k (0: plain APS); a change "
                                                      "refits the sets")
    raps_k: int = Field(1, ge=0, description="classes ranked up to this are not penalised by --raps-lambda")


class ImagePredictOptions(PredictOptions):
    tta: Literal["none", "flip"] = Field("none", description=TTA)


class ImageEvalOptions(EvalOptions):
    tta: Literal["none", "flip"] = Field("none", description=TTA)


class ExportOptions(BaseModel):
    format: Literal["onnx", "hf"] = Field("onnx", description="onnx (dynamic batch and sequence axes) or hf (a "
                                                              "Hugging Face folder)")


class ServeOptions(BaseModel):
    engine: Literal["torch", "onnx"] = Field("torch", description=ENGINE)


class RankOptions(BaseModel):
    candidates: str = Field(description="comma-separated backbone or backbone@weights, e.g. "
                                        "torchvision/mobilenet_v2@imagenet,timm/tf_efficientnet_lite0@none")
    by: Score = Field("logme", description="sort key")
    limit: int = Field(2000, description="stratified sample of the training data to score")
    out: Path | None = Field(None, description="output folder; default: <run_dir>-rank")
    overwrite: bool = Field(False, description="replace an existing ranking")


OPTIONS = {"predict": PredictOptions, "eval": EvalOptions, "export": ExportOptions, "serve": ServeOptions}
IMAGE_OPTIONS = {**OPTIONS, "predict": ImagePredictOptions, "eval": ImageEvalOptions}
RANK = Tool("Rank pretrained backbones for the recipe's data by transferability (LogME, H-score, NCE, LEEP, kNN).",
            RankOptions, "sft.tasks.classification.tools.rank_command:rank_command")
