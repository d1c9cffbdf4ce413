"""The options of regression's commands on a finished run (`sft predict | eval | export | serve`, images and texts
alike), declared as models the way the recipe is: the CLI builds each command's options and --help from them."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

ENGINE = "what runs the model: torch, or onnx (the run's `sft export --format onnx`)"
COVERAGE = ("the share of samples whose true value lies in its interval, between 0 and 1 (e.g. 0.9); the intervals "
            "come from the split-conformal fit on the run's validation residuals stored in model.json")
DEFAULT_COVERAGE = 0.9


class PredictOptions(BaseModel):
    engine: Literal["torch", "onnx"] = Field("torch", description=ENGINE)
    coverage: Optional[float] = Field(None, gt=0, lt=1, description=f"adds each prediction's interval: {COVERAGE}. "
                                                                    f"Default: no intervals")


class EvalOptions(BaseModel):
    coverage: Optional[float] = Field(None, gt=0, lt=1,
                                      description=f"{COVERAGE}. metrics.json gives the share reached on the evaluated "
                                                  f"data and the mean width. Default: {DEFAULT_COVERAGE}, left out with "
                                                  f"a warning when the validation split is too small for it")
    worst: int = Field(16, ge=0, description="samples of largest error shown in report.html (thumbnails or texts)")


class ExportOptions(BaseModel):
    format: Literal["onnx"] = Field("onnx", description="onnx (dynamic batch and sequence axes)")


class ServeOptions(BaseModel):
    engine: Literal["torch", "onnx"] = Field("torch", description=ENGINE)


OPTIONS = {"predict": PredictOptions, "eval": EvalOptions, "export": ExportOptions, "serve": ServeOptions}
