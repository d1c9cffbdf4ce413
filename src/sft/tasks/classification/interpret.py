"""Why did the model say that: Grad-CAM heat maps for images (`grad-cam`), token attributions for texts (captum).

The Grad-CAM layer is found generically, for any backbone: the last layer, in execution order, whose output is a
spatial map (B, C, H, W) larger than 1x1 — or, for transformers, a sequence of tokens whose patch tokens form a
square grid, turned into a map by a reshape transform — and through which the predicted class's gradient actually
flows (the last norm of a class-token ViT carries no gradient on its patch tokens, its last block's first norm does).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import numpy as np
import torch
from torch import nn


def _grid(tokens: int) -> tuple[int, int] | None:
    """(prefix tokens, side) when all but a few leading (class/register) tokens form a square grid."""
    for prefix in range(0, 9):
        side = math.isqrt(max(tokens - prefix, 0))
        if side > 1 and side * side == tokens - prefix:
            return prefix, side
    return None


def tokens_to_map(prefix: int, side: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, prefix + side², C) tokens -> (B, C, side, side) map: Grad-CAM's reshape_transform for transformers."""
    def reshape(x: torch.Tensor) -> torch.Tensor:
        return x[:, prefix:, :].reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)
    return reshape


def find_target_layer(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, Callable | None]:
    """(layer, reshape_transform or None) for Grad-CAM, found by one forward and backward pass on `example`."""
    model.eval()
    height, width = example.shape[-2:]
    calls: Counter = Counter()
    seen: list[tuple[str, nn.Module, torch.Tensor, tuple | None]] = []
    grads: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args, out):
            calls[name] += 1
            if not (isinstance(out, torch.Tensor) and out.requires_grad):
                return
            grid = None
            if out.ndim == 4:  # a map: not larger than the image, and of the image's aspect ratio
                h, w = out.shape[-2:]
                if not (1 < h <= height and 1 < w <= width and abs(h / w - height / width) < 0.25):
                    return
            elif out.ndim == 3 and (grid := _grid(out.shape[1])) is None:
                return
            elif out.ndim not in (3, 4):
                return
            seen.append((name, module, out, grid))
            out.register_hook(lambda g: grads.__setitem__(name, g))
        return record

    owners = [(name, m) for name, m in model.named_modules()
              if name and any(True for _ in m.parameters())]  # layers, not parameter-free reshapes or activations
    handles = [m.register_forward_hook(hook(name)) for name, m in owners]
    try:
        with torch.enable_grad():
            out = model(example.clone().requires_grad_(True))
            out.gather(-1, out.argmax(-1, keepdim=True)).sum().backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    flows = []  # in execution order: layers called once whose (patch) outputs the prediction depends on
    for name, module, out, grid in seen:
        grad = grads.get(name)
        if calls[name] == 1 and grad is not None and (grad if grid is None else grad[:, grid[0]:]).abs().sum() > 0:
            flows.append((module, grid))
    if flows and flows[-1][1] is not None:  # tokens: prefer the last normalisation layer after the last map
        tail = []
        for module, grid in reversed(flows):
            if grid is None:
                break
            tail.append((module, grid))
        flows = [next((t for t in tail if "norm" in type(t[0]).__name__.lower()), tail[0])]
    if flows:
        module, grid = flows[-1]
        return module, (tokens_to_map(*grid) if grid else None)
    raise ValueError("no layer with a spatial output that the prediction depends on: Grad-CAM does not apply")


def denormalize(x: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised input (3, H, W) back to an RGB float image (H, W, 3) in [0, 1]."""
    img = x.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return img.clamp(0, 1).permute(1, 2, 0).numpy()


def cam_maps(model: nn.Module, inputs: torch.Tensor, targets: list[int],
             layer: tuple[nn.Module, Callable | None] | None = None) -> np.ndarray:
    """Grad-CAM maps (B, H, W) in [0, 1] at the input's size, of `inputs` (B, 3, H, W) for the classes `targets`."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    target_layer, reshape = layer or find_target_layer(model, inputs[:1])
    with GradCAM(model=model, target_layers=[target_layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.zero_grad(set_to_none=True)
    return maps


def grad_cam(model: nn.Module, inputs: torch.Tensor, targets: list[int], mean, std,
             layer: tuple[nn.Module, Callable | None] | None = None) -> list[np.ndarray]:
    """Grad-CAM overlays (uint8 RGB, the model's input size) of normalised `inputs` for the classes `targets`."""
    from pytorch_grad_cam.utils.image import show_cam_on_image
    maps = cam_maps(model, inputs, targets, layer)
    return [show_cam_on_image(denormalize(x, mean, std), m, use_rgb=True) for x, m in zip(inputs, maps)]


# -- texts ---------------------------------------------------------------------------------------------------------

def input_embeddings(model: nn.Module) -> nn.Module:
    """The token embedding layer: a Hugging Face model's own `get_input_embeddings()`, else the largest
    nn.Embedding (the vocabulary's)."""
    for module in model.modules():
        getter = getattr(module, "get_input_embeddings", None)
        if callable(getter) and isinstance(found := getter(), nn.Module):
            return found
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not embeddings:
        raise ValueError("the model has no token embedding layer")
    return max(embeddings, key=lambda m: m.num_embeddings)


def token_attributions(model: nn.Module, inputs: dict, target: int, *, tokenizer=None, n_steps: int = 32,
                       baseline_id: int | None = None) -> list[tuple[str, float]]:
    """(token, attribution) of one tokenized text (`inputs`: dict of (1, L) tensors with `input_ids`, as the text
    collate_fn makes them) towards class `target`: captum's LayerIntegratedGradients on the input embeddings,
    baseline = padding tokens, summed over the embedding dimension and scaled to max |a| = 1. Padding is dropped."""
    from captum.attr import LayerIntegratedGradients

    model.eval()
    keys = [k for k in inputs if k != "input_ids"]
    ids = inputs["input_ids"]

    def forward(input_ids, *rest):
        return model({"input_ids": input_ids, **dict(zip(keys, rest))})

    pad = baseline_id if baseline_id is not None else (getattr(tokenizer, "pad_token_id", None) or 0)
    lig = LayerIntegratedGradients(forward, input_embeddings(model))
    with torch.enable_grad():
        attr = lig.attribute(ids, baselines=torch.full_like(ids, pad), target=int(target), n_steps=n_steps,
                             additional_forward_args=tuple(inputs[k] for k in keys))
    model.zero_grad(set_to_none=True)
    scores = attr.sum(-1)[0].detach().float()
    scores = scores / scores.abs().max().clamp(min=1e-12)
    row = ids[0].tolist()
    keep = inputs["attention_mask"][0].bool().tolist() if "attention_mask" in inputs else [True] * len(row)
    names = tokenizer.convert_ids_to_tokens(row) if tokenizer is not None else [f"#{i}" for i in row]
    return [(n, float(s)) for n, s, k in zip(names, scores.tolist(), keep) if k]
