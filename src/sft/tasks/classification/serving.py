"""A finished classification run's predictions: the top-k labels with the run's (calibrated) probabilities, and the
prediction set when a coverage is asked, for `sft predict`'s rows and `sft serve`'s answers. Behind `sft serve`,
request items (image bytes, texts) become the same inputs `sft predict` gives the model (the run's eval transform,
its tokenizer), batches run on PyTorch or onnxruntime; the image and text predictors differ only there."""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import nn

from sft.models.export import probabilities
from sft.tasks.classification.conformal import run_fit, set_rows
from sft.tasks.serving import ImageRequests, Params, RunPredictor, TextRequests


def ranked(probs: torch.Tensor, classes: list[str], k: int) -> list[tuple[str, float]]:
    """The k most probable (class, probability) of one sample's probabilities, most probable first."""
    values, indices = probs.topk(min(k, len(classes)))
    return [(classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]


@torch.inference_mode()
def class_probabilities(model: nn.Module, inputs, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / temperature) of a batch (B, C): the run's calibrated probabilities when `temperature` is its
    fitted value."""
    model.eval()
    return probabilities(model(inputs), temperature)


def predict_top_k(model: nn.Module, inputs, classes: list[str], k: int = 1,
                  temperature: float = 1.0) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) for each input of a batch, in `class_probabilities`."""
    return [ranked(p, classes, k) for p in class_probabilities(model, inputs, temperature)]


class TopK(Params):
    top_k: int = Field(1, ge=1, description="the K most probable classes of each item")
    coverage: Optional[float] = Field(None, gt=0, lt=1, description="adds each item's prediction set: the classes "
                                      "that hold the true one for this share of samples (e.g. 0.9), from the fit "
                                      "`sft eval` stored")


class ClassifierPredictor(RunPredictor):
    """What `sft serve` asks of a run (sft.tasks.base.Predictor): the run's model on `engine`, its model.json, and
    the answer; `prepare` and `batch` are the image's or the text's (sft.tasks.serving)."""
    transform = None
    params = TopK

    def metadata(self) -> dict:
        return {**super().metadata(), "transform": str(self.transform or ""), "temperature": self.info.temperature}

    @torch.inference_mode()
    def run(self, prepared: list) -> list[torch.Tensor]:
        return list(probabilities(self.model(self.batch(prepared)), self.info.temperature))

    def answer(self, probs: torch.Tensor, params: TopK) -> dict:
        answer = {"predictions": [{"label": label, "probability": round(p, 6)}
                                  for label, p in ranked(probs, self.info.classes, params.top_k)]}
        if params.coverage is not None:
            fit = run_fit(self.run_dir, self.info)  # a UserError: the request is answered 422
            answer["set"] = set_rows(probs[None], fit, params.coverage, self.info.classes)[0]
        return answer


class ImagePredictor(ClassifierPredictor, ImageRequests):
    pass


class TextPredictor(ClassifierPredictor, TextRequests):
    pass
