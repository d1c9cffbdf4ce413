"""The run directory: one layout for every command, and the only thing `eval` and `predict` need.

    recipe.yaml            the resolved recipe
    checkpoints/           best.ckpt, last.ckpt (Lightning; resume from last)
    logs/                  metrics.csv (CSV logger), tensorboard/
    model.safetensors      the best weights, backbone + head
    model.json             how to rebuild and feed the model: backbone name, classes, preprocessing
    backbone/              texts: the encoder's config and tokenizer files (the run needs no model folder)
    adapter/               lora: the peft adapter alone (adapter_config.json, adapter_model.safetensors)
    metrics.json           validation/test metrics, train seconds, images/s

A finished or started run is never clobbered: a second `train` into the same folder is refused unless the user asks
for `--overwrite` or `--resume`. Every file is written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sft.atomic import atomic_write, atomic_write_dir, atomic_write_json
from sft.backbones import Preprocess, create_backbone
from sft.classifier import logits, new_head
from sft.errors import UserError
from sft.tasks import TEXT
from sft.text import TextPreprocess


def is_child_process() -> bool:
    """True in the extra processes Lightning launches for DDP: they share rank 0's run directory."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


@dataclass
class RunDir:
    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    recipe = property(lambda self: self.path / "recipe.yaml")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.ckpt")
    best_checkpoint = property(lambda self: self.path / "checkpoints" / "best.ckpt")
    model_weights = property(lambda self: self.path / "model.safetensors")
    model_info = property(lambda self: self.path / "model.json")
    backbone_files = property(lambda self: self.path / "backbone")
    adapter = property(lambda self: self.path / "adapter")
    metrics = property(lambda self: self.path / "metrics.json")

    def check(self, *, overwrite: bool, resume: bool) -> None:
        """Refuse to touch an existing run unless the user asked to continue or replace it."""
        if overwrite and resume:
            raise UserError("--overwrite and --resume exclude each other")
        if resume:
            if not self.last_checkpoint.exists():
                raise UserError(f"{self.path}: nothing to resume (no checkpoints/last.ckpt); train without --resume")
        elif self.path.exists() and any(self.path.iterdir()) and not overwrite:
            state = "a finished run" if self.metrics.exists() else "an unfinished run"
            raise UserError(f"{self.path} already holds {state}; pass --resume to continue it, --overwrite to "
                            f"replace it, or set run_dir to another folder")

    def start(self, *, overwrite: bool, resume: bool) -> None:
        """Create the folder (after `check` and after the inputs proved valid, so a typo leaves nothing behind)."""
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_json(self.metrics, metrics)

    def read_metrics(self) -> dict:
        return json.loads(self.metrics.read_text()) if self.metrics.exists() else {}


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


def export_model(run: RunDir, model: nn.Module, info: ModelInfo) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if k.startswith(("backbone.", "head."))}
    if info.task == TEXT:
        encoder = model.backbone
        atomic_write_dir(run.backbone_files, lambda tmp: (encoder.model.config.save_pretrained(tmp),
                                                         encoder.tokenizer.save_pretrained(tmp)))
        if info.lora:
            atomic_write_dir(run.adapter, encoder.model.save_pretrained)
    atomic_write(run.model_weights, lambda tmp: save_file(state, tmp))
    atomic_write_json(run.model_info, asdict(info))


def load_model(run_dir: str | Path) -> tuple[nn.Module, ModelInfo]:
    """The trained model (eval mode) and its info, from a run directory alone."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise UserError(f"{run.path}: no such run directory")
    if not (run.model_weights.exists() and run.model_info.exists()):
        raise UserError(f"{run.path}: no finished model (model.safetensors, model.json); the run did not complete "
                        f"— resume it with `sft train RECIPE --resume`")
    raw = json.loads(run.model_info.read_text())
    kind = TextPreprocess if raw.get("task") == TEXT else Preprocess
    raw["preprocess"] = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["preprocess"].items()})
    info = ModelInfo(**raw)
    if info.task == TEXT:
        backbone = _text_encoder(run, info)
    else:
        backbone = create_backbone(info.backbone, weights=None).module
    model = nn.ModuleDict({"backbone": backbone, "head": new_head(info.num_features, len(info.classes), info.dropout)})
    model.load_state_dict(load_file(run.model_weights))
    model.eval()
    if info.channels_last:  # the layout it trained in: mixed layouts are several times slower on CPU
        model.to(memory_format=torch.channels_last)
    return ImageModel(model, info.channels_last), info


def _text_encoder(run: RunDir, info: ModelInfo) -> nn.Module:
    """The encoder from the run's own config and tokenizer files, LoRA-wrapped like in training; the weights
    come from model.safetensors."""
    from sft.recipe import Strategy
    from sft.text import create_text_encoder
    encoder = create_text_encoder(str(run.backbone_files), "none", info.preprocess.pooling)[0]
    if info.lora:
        from sft.lora import add_lora
        encoder.model = add_lora(encoder.model, Strategy(**info.lora))
    return encoder


class ImageModel(nn.Module):
    """backbone -> head, for evaluation and prediction (of images, texts or features)."""

    def __init__(self, parts: nn.ModuleDict, channels_last: bool):
        super().__init__()
        self.backbone, self.head, self.channels_last = parts["backbone"], parts["head"], channels_last

    def forward(self, x: torch.Tensor | dict) -> torch.Tensor:
        return logits(self.backbone, self.head, x, self.channels_last)
