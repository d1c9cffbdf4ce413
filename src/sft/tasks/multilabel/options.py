"""The options of multi-label commands on a finished run (`sft predict | eval | export | serve`, images and texts
alike), declared as models the way the recipe is: the CLI builds each command's options and --help from them."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

from sft.tasks.multilabel.risk import DEFAULT_FNR

ENGINE = "what runs the model: torch, or onnx (the run's `sft export --format onnx`)"
FNR = ("a false-negative rate between 0 and 1 (e.g. 0.1): one threshold for every label, from conformal risk control "
       "on the run's validation split (stored in model.json), keeps the mean share of a sample's true labels left out "
       "at most this")


class PredictOptions(BaseModel):
    engine: Literal["torch", "onnx"] = Field("torch", description=ENGINE)
    fnr: Optional[float] = Field(None, gt=0, lt=1, description=f"labels by the guaranteed threshold: {FNR}. Default: "
                                                               f"each label's F1-best threshold")


class EvalOptions(BaseModel):
    fnr: Optional[float] = Field(None, gt=0, lt=1, description=f"{FNR}. metrics.json gives the rate reached on the "
                                                               f"evaluated data. Default: {DEFAULT_FNR}, left out "
                                                               f"with a warning when the validation split is too "
                                                               f"small for it")
    worst: int = Field(16, ge=0, description="samples of largest loss shown in report.html (thumbnails or texts)")


class ExportOptions(BaseModel):
    format: Literal["onnx"] = Field("onnx", description="onnx (dynamic batch and sequence axes)")


class ServeOptions(BaseModel):
    engine: Literal["torch", "onnx"] = Field("torch", description=ENGINE)


OPTIONS = {"predict": PredictOptions, "eval": EvalOptions, "export": ExportOptions, "serve": ServeOptions}
