"""A finished classification run's model: written as model.safetensors + model.json (+ the text encoder's config and
tokenizer, and a LoRA run's adapter), and rebuilt from those files alone for `sft eval` and `sft predict`.

    model.safetensors      the best weights, backbone + head
    model.json             how to rebuild and feed the model: backbone name, classes, preprocessing, temperature
    backbone/              texts: the encoder's config and tokenizer files (the run needs no model folder)
    adapter/               lora: the peft adapter alone (adapter_config.json, adapter_model.safetensors)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from sft.core.atomic import atomic_write_dir
from sft.core.rundir import RunDir
from sft.core.torchfile import load_safetensors
from sft.data.images import build_transforms
from sft.errors import UserError
from sft.models.backbone import Preprocess
from sft.models.lora import add_lora
from sft.models.text_encoder import TextPreprocess, create_text_encoder
from sft.models.vision import create_backbone
from sft.recipe import Lora
from sft.tasks.base import REBUILD, load_parts
from sft.tasks.classification.module import logits, new_head


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


def model_files(run: RunDir) -> tuple[Path, Path, Path, Path]:
    """(weights, info, encoder files, adapter) of a run."""
    return (run.path / "model.safetensors", run.path / "model.json", run.path / "backbone", run.path / "adapter")


def used_preprocess(pre, image_size: int | None):
    """The preprocessing a run trained with: the backbone's own, at data.image_size when set."""
    if isinstance(pre, Preprocess) and image_size:
        return replace(pre, input_size=(image_size, image_size))
    return pre


def eval_transform(info: ModelInfo):
    """An image run's evaluation transform, from what the run stored (`sft eval`, `predict`, `serve`, the export)."""
    return build_transforms(info.preprocess, None, "none")[1]


# -- what differs: the backbone's own files --------------------------------------------------------------------------

def write_encoder(run: RunDir, model: nn.Module, info: ModelInfo) -> None:
    """A text run's encoder config and tokenizer (backbone/), and a LoRA run's adapter (adapter/)."""
    _, _, encoder_files, adapter = model_files(run)
    encoder = model.backbone
    atomic_write_dir(encoder_files, lambda tmp: (encoder.model.config.save_pretrained(tmp),
                                                 encoder.tokenizer.save_pretrained(tmp)))
    if info.lora:
        atomic_write_dir(adapter, encoder.model.save_pretrained)


def read_encoder(run_dir: Path, info: ModelInfo) -> nn.Module:
    """A text run's encoder, from its backbone/ files (with its LoRA adapters), weights not loaded."""
    encoder = create_text_encoder(str(model_files(RunDir(run_dir))[2]), "none", info.preprocess.pooling)[0]
    if info.lora:
        settings = {k: v for k, v in info.lora.items() if k in Lora.model_fields}  # the run's strategy section
        encoder.model = add_lora(encoder.model, Lora(**settings))
    return encoder


def read_vision_backbone(run_dir: Path, info: ModelInfo) -> nn.Module:
    """An image run's backbone, built by name, weights not loaded."""
    return create_backbone(info.backbone, weights=None).module


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
