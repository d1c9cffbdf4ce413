"""A finished multi-label run's predictions, for `sft predict`'s rows and `sft serve`'s answers alike: the labels
whose probability reaches their threshold (each label's F1-best one from validation, or with an fnr the conformal
threshold that keeps the false-negative rate), with their probabilities. Behind `sft serve`, request items become the
inputs `sft predict` gives the model (sft.tasks.serving), batches run on PyTorch or onnxruntime."""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import nn

from sft.tasks.multilabel.risk import run_fnr
from sft.tasks.serving import ImageRequests, Params, RunPredictor, TextRequests


def thresholds_for(run_dir, info, fnr: float | None) -> list[float]:
    """The run's per-label thresholds, or the one conformal threshold of `fnr` for every label."""
    if fnr is None:
        return list(info.thresholds)
    return [run_fnr(run_dir, info).threshold(fnr)] * len(info.classes)


def chosen(probabilities: torch.Tensor, names: list[str], thresholds: list[float]) -> list[tuple[str, float]]:
    """One sample's (label, probability) over its threshold, most probable first."""
    picked = [(n, round(float(p), 4)) for n, p, t in zip(names, probabilities.tolist(), thresholds) if p >= t]
    return sorted(picked, key=lambda x: -x[1])


@torch.inference_mode()
def predict_probabilities(model: nn.Module, inputs) -> torch.Tensor:
    """The model's label probabilities of a batch (B, C)."""
    model.eval()
    return model(inputs).float()


class Fnr(Params):
    fnr: Optional[float] = Field(None, gt=0, lt=1, description="labels by the one threshold that keeps the "
                                 "false-negative rate at most this (e.g. 0.1), from the fit stored in model.json; "
                                 "default: each label's F1-best threshold")


class MultilabelPredictor(RunPredictor):
    """`sft serve` for a multi-label run: per item {"labels": [...], "probabilities": {label: p}} and the
    thresholds used."""
    transform = None
    params = Fnr

    def metadata(self) -> dict:
        return {**super().metadata(), "thresholds": dict(zip(self.info.classes, self.info.thresholds)),
                "transform": str(self.transform or "")}

    def run(self, prepared: list) -> list[torch.Tensor]:
        return list(predict_probabilities(self.model, self.batch(prepared)))

    def answer(self, probabilities: torch.Tensor, params: Fnr) -> dict:
        names = self.info.classes
        thresholds = thresholds_for(self.run_dir, self.info, params.fnr)  # a UserError: the request is answered 422
        return {"labels": [n for n, _ in chosen(probabilities, names, thresholds)],
                "probabilities": {n: round(float(p), 4) for n, p in zip(names, probabilities.tolist())},
                **({"fnr": params.fnr, "threshold": thresholds[0]} if params.fnr else {})}


class ImageMultilabelPredictor(MultilabelPredictor, ImageRequests):
    pass


class TextMultilabelPredictor(MultilabelPredictor, TextRequests):
    pass
