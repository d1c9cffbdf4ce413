"""The options of segmentation's commands on a finished run, declared as models: the CLI builds each command's options
and --help from them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


TTA = "flip: the model also sees each image mirrored, per-pixel logits mirrored back and averaged (twice the compute)"


class PredictOptions(BaseModel):
    out: Path | None = Field(None, description="a folder for each image's index mask and colour overlay")
    engine: Literal["torch", "onnx"] = Field("torch", description="what runs the model: torch, or onnx (the run's "
                                                                  "`sft export`)")
    tta: Literal["none", "flip"] = Field("none", description=TTA)


class EvalOptions(BaseModel):
    tta: Literal["none", "flip"] = Field("none", description=TTA)
    top_losses: int = Field(16, ge=0, description="images of lowest IoU shown, with their predicted masks")


class ExportOptions(BaseModel):
    format: Literal["onnx"] = Field("onnx", description="onnx (dynamic batch axis)")


class ServeOptions(BaseModel):
    engine: Literal["torch", "onnx"] = Field("torch", description="what runs the model: torch, or onnx (the run's "
                                                                  "`sft export`)")


OPTIONS = {"predict": PredictOptions, "eval": EvalOptions, "export": ExportOptions, "serve": ServeOptions}
