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
from sft.errors import UserError
from sft.models.backbone import Preprocess
from sft.models.lora import add_lora
from sft.models.text_encoder import TextPreprocess, create_text_encoder
from sft.models.vision import create_backbone
from sft.recipe import Lora
from sft.tasks import base
from sft.tasks.base import REBUILD, load_parts, read_model_files, with_preprocess, write_model_files
from sft.tasks.classification.module import logits, new_head
from sft.tasks.classification.recipe import TEXT


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


def export_model(run: RunDir, model: nn.Module, info: ModelInfo) -> None:
    _, _, encoder_files, adapter = model_files(run)
    if info.task == TEXT:
        encoder = model.backbone
        atomic_write_dir(encoder_files, lambda tmp: (encoder.model.config.save_pretrained(tmp),
                                                     encoder.tokenizer.save_pretrained(tmp)))
        if info.lora:
            atomic_write_dir(adapter, encoder.model.save_pretrained)
    write_model_files(run.path, model, info)


def used_preprocess(pre, image_size: int | None):
    """The preprocessing a run trained with: the backbone's own, at data.image_size when set."""
    if isinstance(pre, Preprocess) and image_size:
        return replace(pre, input_size=(image_size, image_size))
    return pre


def read_info(path: Path) -> ModelInfo:
    """model.json (a run's or an export's) as a ModelInfo (keys it does not know, such as an export's, are left out)."""
    return base.read_info(path, ModelInfo, _preprocess)


def _preprocess(raw: dict) -> dict:
    return with_preprocess(raw, TextPreprocess if raw.get("task") == TEXT else Preprocess)


def load_model(run_dir: str | Path) -> tuple[TrainedClassifier, ModelInfo]:
    """The trained model (eval mode) and its info, from a run directory alone."""
    run = RunDir(run_dir)
    weights, info_file, encoder_files, _ = model_files(run)
    info, state = read_model_files(run.path, ModelInfo, _preprocess)
    if info.task == TEXT:
        backbone = create_text_encoder(str(encoder_files), "none", info.preprocess.pooling)[0]
        if info.lora:
            settings = {k: v for k, v in info.lora.items() if k in Lora.model_fields}  # the run's strategy section
            backbone.model = add_lora(backbone.model, Lora(**settings))
    else:
        backbone = create_backbone(info.backbone, weights=None).module
    model = nn.ModuleDict({"backbone": backbone, "head": new_head(info.num_features, len(info.classes), info.dropout)})
    head, own = state.get("head.1.weight"), model.state_dict()["head.1.weight"]
    if head is not None and head.shape != own.shape:
        raise UserError(f"{weights} has a head for {head.shape[0]} classes of {head.shape[1]} features, but "
                        f"{info_file} lists {len(info.classes)} classes of {info.num_features}: the two files are "
                        f"from different runs or damaged; {REBUILD}")
    load_parts(model, state, run.path)
    model.eval()
    if info.channels_last:  # the layout it trained in: mixed layouts are several times slower on CPU
        model.to(memory_format=torch.channels_last)
    return TrainedClassifier(model, info.channels_last).eval(), info  # eval at the top too: exporters restore it
