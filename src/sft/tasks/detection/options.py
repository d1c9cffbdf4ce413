"""The options of detection's commands on a finished run, declared as models: the CLI builds each command's options
and --help from them."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class PredictOptions(BaseModel):
    out: Path | None = Field(None, description="a folder for each image drawn with its boxes, and its boxes as JSON")
    score: float = Field(0.3, ge=0, le=1, description="the lowest score shown")


class EvalOptions(BaseModel):
    top_losses: int = Field(16, ge=0, description="images with the most errors shown, drawn with their boxes")


OPTIONS = {"predict": PredictOptions, "eval": EvalOptions}
