"""The one contract every backbone follows, in the spirit of timm's: a module, its output (pooled vectors or feature
maps), its layer groups for the freezing strategies, its input convention and where its weights came from.

`out="pooled"`: the module maps inputs to (B, num_features). `out="maps"`: it maps images to a list of feature maps,
input side first, with `channels[i]` channels at 1/`reductions[i]` of the input size (what segmentation decoders and
detector FPNs take). Both modes hold the same parameters under the same group structure, so every strategy works in
both, and the same weights files load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn


@dataclass(frozen=True)
class Preprocess:
    """The backbone's own input convention, the default for transforms."""

    input_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bilinear" | "bicubic"
    crop_pct: float  # resize to input/crop_pct then center-crop (timm convention)


@dataclass
class Backbone:
    """A pretrained feature extractor with what fine-tuning strategies need to know about it."""

    name: str  # as given, e.g. "timm/tf_efficientnet_lite0", "torchvision/mobilenet_v2", "minilm"
    module: nn.Module  # inputs -> (B, num_features) when out == "pooled", else a list of maps
    num_features: int  # size of the pooled vector (pooled mode)
    groups: list[list[str]]  # parameter names of `module`, grouped input->output; each in at most one group
    preprocess: object  # Preprocess (images) or the text encoder's own settings
    weights_id: str  # "none", "imagenet:<file>:<size>", "file:<abs path>:<size>:<mtime_ns>", "hub", "pretrained:.."
    out: str = "pooled"
    channels: list[int] = field(default_factory=list)  # maps mode: channels of each map
    reductions: list[int] = field(default_factory=list)  # maps mode: input size / map size of each map


class _Done(Exception):
    """Raised by the last stage's hook: nothing after it is computed."""


class FeatureMaps(nn.Module):
    """A backbone seen as a feature pyramid: the outputs of its stage modules, collected by forward hooks. The model
    keeps its own structure and parameter names (under `model.`), so its weights files and groups still apply."""

    def __init__(self, model: nn.Module, stages: list[str]):
        super().__init__()
        self.model, self.stages = model, list(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        found: dict[str, torch.Tensor] = {}
        hooks = [self.model.get_submodule(name).register_forward_hook(partial(self._keep, found, name))
                 for name in self.stages]
        try:
            getattr(self.model, "forward_features", self.model)(x)
        except _Done:
            pass
        finally:
            for hook in hooks:
                hook.remove()
        return [found[name] for name in self.stages]

    def _keep(self, found: dict, name: str, module, args, output) -> None:
        found[name] = output
        if name == self.stages[-1]:
            raise _Done


def find_stages(model: nn.Module, candidates: list[str], size: int = 64) -> tuple[list[str], list[int], list[int]]:
    """(stage names, channels, reductions): of the `candidates` modules, the last one at each spatial reduction, found
    by one forward pass of a dummy image."""
    shapes: dict[str, tuple] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, a, out, n=n: shapes.__setitem__(n, tuple(out.shape)) if isinstance(out, torch.Tensor) else None)
        for n in candidates]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            getattr(model, "forward_features", model)(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    last: dict[int, tuple[str, int]] = {}
    for name in candidates:
        shape = shapes.get(name)
        if shape is not None and len(shape) == 4:
            last[size // shape[-1]] = (name, shape[1])
    reductions = sorted(last)
    return [last[r][0] for r in reductions], [last[r][1] for r in reductions], reductions


def as_feature_maps(backbone: Backbone, stages: list[str], channels: list[int], reductions: list[int]) -> Backbone:
    """The pooled backbone in maps mode. Parameters that feed no stage (a head convolution after the last stage) are
    left out of the groups, so they stay frozen and never miss a gradient under DDP."""
    maps = FeatureMaps(backbone.module, stages)
    used = _parameters_used(maps, backbone.preprocess)
    groups = [[f"model.{n}" for n in group if f"model.{n}" in used] for group in backbone.groups]
    return Backbone(backbone.name, maps, 0, [g for g in groups if g], backbone.preprocess, backbone.weights_id,
                    "maps", channels, reductions)


def _parameters_used(maps: FeatureMaps, preprocess) -> set[str]:
    size = 64
    params = dict(maps.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    was_training = maps.training
    maps.eval()
    try:
        sum(m.float().sum() for m in maps(torch.zeros(1, 3, size, size))).backward()
        return {n for n, p in params.items() if p.grad is not None}
    finally:
        maps.train(was_training)
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(flags[n])


def last_linear(module: nn.Module) -> nn.Linear | None:
    """A head's last nn.Linear (the classifier layer inside Dropout/Sequential wrappers), or None."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def load_linear(head: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Put a fitted linear start (a probe's weights (outputs, features) and bias) into the head's last nn.Linear."""
    linear = last_linear(head)
    with torch.no_grad():
        linear.weight.copy_(weight.to(linear.weight))
        linear.bias.copy_(bias.to(linear.bias))
