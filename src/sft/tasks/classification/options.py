"""The options of classification's commands on a finished run (`sft predict | eval | export | serve`, image and text
alike) and of its tool `sft rank`, declared as models the way the recipe is: the CLI builds each command's options and
--help from them. Only pydantic here: the CLI reads this module to list `sft rank` without loading any model code."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from sft.tasks import Tool

ENGINE = "what runs the model: torch, or onnx (the run's `sft export --format onnx`)"
Score = Literal["logme", "hscore", "nce", "leep", "knn_acc", "probe_acc"]  # rank's scores, in its table's order


class PredictOptions(BaseModel):
    top_k: int = Field(1, ge=1, description="the K most probable classes of each input")
    engine: Literal["torch", "onnx"] = Field("torch", description=ENGINE)


class EvalOptions(BaseModel):
    top_losses: int = Field(16, ge=0, description="samples of highest loss shown, with Grad-CAM (images) or token "
                                                  "attributions (texts)")


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
RANK = Tool("Rank pretrained backbones for the recipe's data by transferability (LogME, H-score, NCE, LEEP, kNN).",
            RankOptions, "sft.tasks.classification.tools.rank:rank_command")
