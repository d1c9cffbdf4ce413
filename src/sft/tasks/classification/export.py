"""A finished classification run's model: model.safetensors + model.json (its `ModelInfo`: backbone name, classes,
preprocessing, temperature) beside the files every pooled-vector task writes (sft.tasks.pooled: a text encoder's
config and tokenizer, a LoRA run's adapter), rebuilt from those files alone for `sft eval` and `sft predict`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sft.core.rundir import RunDir
from sft.core.torchfile import load_safetensors
from sft.errors import UserError
from sft.models.backbone import Preprocess
from sft.models.text_encoder import TextPreprocess
from sft.tasks.base import REBUILD, load_parts
from sft.tasks.classification.module import logits, new_head
from sft.tasks.pooled import model_files


@dataclass
class ModelInfo:
    """Everything needed to rebuild the trained model without the training data or the original weights."""
    backbone: str
    classes: list[str]
    num_features: int
    preprocess: Preprocess | TextPreprocess
    dropout: float = 0.0
    channels_last: bool = False
    task: str = "image-classification"
    lora: dict | None = None  # the strategy section of a lora run: rebuilds the same adapters
    temperature: float = 1.0  # calibration: predicted probabilities are softmax(logits / temperature)
    extra: dict = field(default_factory=dict)


class TrainedClassifier(nn.Module):
    """backbone -> head, for evaluation and prediction (of images, tokenized texts or cached features)."""

    def __init__(self, parts: nn.ModuleDict, channels_last: bool):
        super().__init__()
        self.backbone, self.head, self.channels_last = parts["backbone"], parts["head"], channels_last

    def forward(self, x: torch.Tensor | dict) -> torch.Tensor:
        return logits(self.backbone, self.head, x, self.channels_last)


def load_model(run_dir: str | Path, info: ModelInfo, backbone: nn.Module) -> TrainedClassifier:
    """The trained model (eval mode) from `backbone` (the task builds it from the run's files) and a new head, the
    run's model.safetensors loaded into both."""
    run = RunDir(run_dir)
    weights, info_file, _, _ = model_files(run)
    model = nn.ModuleDict({"backbone": backbone, "head": new_head(info.num_features, len(info.classes), info.dropout)})
    state = load_safetensors(weights, REBUILD)
    head, own = state.get("head.1.weight"), model.state_dict()["head.1.weight"]
    if head is not None and head.shape != own.shape:
        raise UserError(f"{weights} has a head for {head.shape[0]} classes of {head.shape[1]} features, but "
                        f"{info_file} lists {len(info.classes)} classes of {info.num_features}: the two files are "
                        f"from different runs or damaged; {REBUILD}")
    load_parts(model, state, run.path)
    model.eval()
    if info.channels_last:  # the layout it trained in: mixed layouts are several times slower on CPU
        model.to(memory_format=torch.channels_last)
    return TrainedClassifier(model, info.channels_last).eval()  # eval at the top too: exporters restore it
