"""Whole-model checkpoints from a file (`model.checkpoint` of the dense tasks): reading a state dict, and fitting a
part of it that must load whole.

A part that loads partly (a backbone or a decoder with a few tensors missing or of another shape) would train from a
mixture of the file and fresh initialisation without saying so, so such parts must fit name for name and shape for
shape, or the run stops with a UserError that counts what differs and names one example. Only the class-sized layers
may differ (another class count): the tasks leave those as initialised, as torchvision's fine-tuning tutorial does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sft.core.torchfile import load_safetensors, load_torch_file
from sft.errors import UserError


def read_state_dict(file: Path, hint: str) -> dict[str, torch.Tensor]:
    """The state dict of a .safetensors file or a weights-only PyTorch file (a state dict, or a training checkpoint
    {"model": state} / {"state_dict": state}); a UserError ending in `hint` otherwise."""
    if not file.is_file():
        raise UserError(f"model.checkpoint: {file} not found; {hint}")
    if file.suffix == ".safetensors":
        state = load_safetensors(file, hint)
    else:
        state = load_torch_file(file, hint)
        if isinstance(state, dict):
            state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"model.checkpoint: {file} holds no state dict (names to tensors, or a {{\"model\": "
                        f"state}} wrapper); {hint}")
    return state


def fit_whole(own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], *, shown: str, what: str, fix: str,
              prefixes: tuple[str, ...] = ("",), file_prefix: str = "") -> dict[str, torch.Tensor]:
    """`theirs` (a part of the file, its names stripped of `file_prefix`) under `own`'s names: each name prefixed by
    the one of `prefixes` that maps most of them. Every tensor of `own` (BatchNorm's counters aside) must come from
    the file with its shape, and nothing may be left over; otherwise a UserError: "model.checkpoint: {shown}'s
    {what}: counts (e.g. the first difference); {fix}"."""
    if not theirs:
        return {}
    prefix = max(prefixes, key=lambda p: sum(p + k in own for k in theirs))
    mapped = {prefix + k: v for k, v in theirs.items()}
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    extra = [k for k in mapped if k not in own]
    shapes = [k for k in mapped if k in own and own[k].shape != mapped[k].shape]
    if missing or extra or shapes:
        if shapes:
            k = shapes[0]
            example = f"{file_prefix}{k[len(prefix):]} is {list(mapped[k].shape)} in the file, {list(own[k].shape)} here"
        else:
            example = (f"{file_prefix}{extra[0][len(prefix):]} has no counterpart here" if extra else
                       f"{missing[0]} is not in the file")
        raise UserError(f"model.checkpoint: {shown}'s {what}: {len(shapes)} tensors of another shape, {len(extra)} "
                        f"unknown, {len(missing)} missing (e.g. {example}); {fix}")
    return mapped
