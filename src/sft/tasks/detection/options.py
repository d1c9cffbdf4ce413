"""The options of detection's commands on a finished run, declared as models: the CLI builds each command's options
and --help from them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


TTA = "flip: the model also sees each image mirrored, boxes mirrored back and merged by NMS (twice the compute)"


class PredictOptions(BaseModel):
    out: Path | None = Field(None, description="a folder for each image drawn with its boxes, and its boxes as JSON")
    score: float = Field(0.3, ge=0, le=1, description="the lowest score shown")
    engine: Literal["torch", "onnx"] = Field("torch", description="what runs the model: torch, or onnx (the run's "
                                                                  "`sft export`)")
    tta: Literal["none", "flip"] = Field("none", description=TTA)


class EvalOptions(BaseModel):
    tta: Literal["none", "flip"] = Field("none", description=TTA)
    top_losses: int = Field(16, ge=0, description="images with the most errors shown, drawn with their boxes")


class ServeOptions(BaseModel):
    engine: Literal["torch", "onnx"] = Field("torch", description="what runs the model: torch, or onnx (the run's "
                                                                  "`sft export`)")


class ExportOptions(BaseModel):
    format: Literal["onnx"] = Field("onnx", description="onnx (dynamic batch axis; box decoding, NMS and top-k inside "
                                                        "the graph)")


OPTIONS = {"predict": PredictOptions, "eval": EvalOptions, "serve": ServeOptions, "export": ExportOptions}
