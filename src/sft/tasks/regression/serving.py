"""A finished regression run's predictions, for `sft predict`'s rows and `sft serve`'s answers alike: each target
column's value in its own units and, when a coverage is asked, its split-conformal interval. Behind `sft serve`,
request items (image bytes, texts) become the inputs `sft predict` gives the model (sft.tasks.serving), batches run
on PyTorch or onnxruntime."""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import nn

from sft.tasks.regression.intervals import run_fit
from sft.tasks.serving import ImageRequests, Params, RunPredictor, TextRequests


def shown(value: float) -> float:
    """A value as predictions give it: 6 significant digits, whatever the targets' scale."""
    return float(f"{value:.6g}")


def value_columns(values: torch.Tensor, names: list[str], half: list[float] | None) -> dict:
    """One sample's predictions (K,) as {name: value}, with {name_low, name_high} when interval half-widths are
    given."""
    row = {}
    for name, v, h in zip(names, values.tolist(), half or [None] * len(names)):
        row[name] = shown(v)
        if h is not None:
            row[f"{name}_low"], row[f"{name}_high"] = shown(v - h), shown(v + h)
    return row


@torch.inference_mode()
def predict_values(model: nn.Module, inputs) -> torch.Tensor:
    """The model's predictions of a batch (B, K), in the targets' units."""
    model.eval()
    return model(inputs).float()


class Coverage(Params):
    coverage: Optional[float] = Field(None, gt=0, lt=1, description="adds each value's interval: it holds the true "
                                      "value for this share of samples (e.g. 0.9), from the fit stored in model.json")


class RegressionPredictor(RunPredictor):
    """`sft serve` for a regression run: per item {"values": {target: value}} and, with a coverage,
    {"intervals": {target: [low, high]}}."""
    transform = None
    params = Coverage

    def metadata(self) -> dict:
        return {**super().metadata(), "targets": self.info.targets, "transform": str(self.transform or "")}

    def run(self, prepared: list) -> list[torch.Tensor]:
        return list(predict_values(self.model, self.batch(prepared)))

    def answer(self, values: torch.Tensor, params: Coverage) -> dict:
        names = self.info.targets
        half = run_fit(self.run_dir, self.info).half_widths(params.coverage) if params.coverage else None
        row = value_columns(values, names, half)  # a UserError above: the request is answered 422
        answer = {"values": {n: row[n] for n in names}}
        if half is not None:
            answer["intervals"] = {n: [row[f"{n}_low"], row[f"{n}_high"]] for n in names}
        return answer


class ImageRegressionPredictor(RegressionPredictor, ImageRequests):
    pass


class TextRegressionPredictor(RegressionPredictor, TextRequests):
    pass
