"""A finished classification run's predictions: the top-k labels with the run's (calibrated) probabilities, and the
prediction set when a coverage is asked, for `sft predict`'s rows and `sft serve`'s answers. Behind `sft serve`,
request items (image bytes, texts) become the same inputs `sft predict` gives the model (the run's eval transform,
its tokenizer), batches run on PyTorch or onnxruntime; the image and text predictors differ only there."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from pydantic import Field
from torch import nn

from sft.errors import UserError
from sft.models.export import probabilities
from sft.tasks.classification.conformal import run_fit, set_rows
from sft.tasks.classification.export import eval_transform
from sft.tasks.serving import Params, RunPredictor, decode_image


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


def text_item(text: str, pair: bool) -> str | tuple[str, str]:
    """A text as the run's model takes it: a run on text pairs takes 'first<TAB>second' as the pair."""
    if not pair:
        return text
    if "\t" not in text:
        raise UserError(f"this run classifies text pairs: give each as 'first<TAB>second' ({text!r})")
    return tuple(text.split("\t", 1))


class TopK(Params):
    top_k: int = Field(1, ge=1, description="the K most probable classes of each item")
    coverage: Optional[float] = Field(None, gt=0, lt=1, description="adds each item's prediction set: the classes "
                                      "that hold the true one for this share of samples (e.g. 0.9), from the fit "
                                      "`sft eval` stored")


class ClassifierPredictor(RunPredictor):
    """What `sft serve` asks of a run (sft.tasks.base.Predictor): the run's model on `engine`, its model.json, and
    the answer; `prepare` and `batch` are the image's or the text's."""
    inputs = ""
    transform = None
    params = TopK

    def __init__(self, task, run_dir: str | Path, engine: str):
        super().__init__(task, run_dir, engine)
        self.collate = task.run_inputs(self.model, self.info).collate

    def metadata(self) -> dict:
        return {**super().metadata(), "transform": str(self.transform or ""), "temperature": self.info.temperature}

    def prepare(self, item: bytes | str) -> object:
        raise NotImplementedError

    def batch(self, prepared: list):
        raise NotImplementedError

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


class ImagePredictor(ClassifierPredictor):
    inputs = "image"

    def __init__(self, task, run_dir: str | Path, engine: str):
        super().__init__(task, run_dir, engine)
        self.transform = eval_transform(self.info)

    def prepare(self, item: bytes | str) -> torch.Tensor:
        return self.transform(decode_image(item))

    def batch(self, prepared: list) -> torch.Tensor:
        return torch.stack(prepared)


class TextPredictor(ClassifierPredictor):
    inputs = "text"

    def prepare(self, item: bytes | str) -> str | tuple[str, str]:
        if not isinstance(item, str) or not item.strip():
            raise UserError("each text must be a non-empty string")
        return text_item(item, self.info.preprocess.pair)

    def batch(self, prepared: list) -> dict:
        return self.collate([(t, 0) for t in prepared])[0]
