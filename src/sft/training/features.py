"""The feature cache: a frozen backbone's outputs computed once per (backbone, weights, transform, data), then reused.

Head-only epochs (linear probe, the first stage of two-stage, the start of gradual) train on these features, so the
backbone runs once over the data instead of once per epoch. The key covers everything the features depend on, so any
change recomputes them. On disk, files are written atomically under a lock, so several processes (DDP) or runs
share one computation.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.utils.data import DataLoader, Dataset

from sft.core.atomic import atomic_write
from sft.core.lock import holding
from sft.core.precision import autocast_for
from sft.core.torchfile import load_torch_file
from sft.errors import UserError

log = logging.getLogger("sft")
_memory: dict[str, torch.Tensor] = {}


def cache_key(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def cached_features(key: str, backbone: nn.Module, dataset: Dataset, *, mode: str, cache_dir: str | Path,
                    batch_size: int, precision: str, channels_last: bool,
                    device: torch.device | str = "cpu", num_workers: int = 0, collate_fn=None) -> torch.Tensor:
    """Features (N, D) float32 for `dataset` (whose items are (input, label)), from memory, disk or computed."""
    def compute() -> torch.Tensor:
        return extract_features(backbone, dataset, batch_size=batch_size, precision=precision,
                                channels_last=channels_last, device=device, num_workers=num_workers,
                                collate_fn=collate_fn)

    if mode == "memory":
        if key not in _memory:
            _memory[key] = compute()
        return _memory[key]
    if mode == "none":
        return compute()
    path = Path(cache_dir).expanduser() / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with holding(path):
        if path.exists():
            try:
                features = load_torch_file(path, "")
                if isinstance(features, torch.Tensor) and features.ndim == 2 and len(features) == len(dataset):
                    return features
                problem = f"holds {type(features).__name__} {tuple(getattr(features, 'shape', ()))}"
            except UserError as e:
                problem = str(e).removeprefix(f"{path}: ").rstrip("; ")
            log.warning(f"{path}: damaged feature cache file ({problem}); computing the features again")
        features = compute()
        atomic_write(path, lambda tmp: torch.save(features, tmp))
        return features


def weights_digest(module: nn.Module) -> str:
    """A digest of every tensor of the module: the features' true dependency, whatever the weights came from."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.inference_mode()
def extract_features(backbone: nn.Module, dataset: Dataset, *, batch_size: int, precision: str,
                     channels_last: bool, device: torch.device | str = "cpu", num_workers: int = 0,
                     collate_fn=None) -> torch.Tensor:
    """One pass of the backbone in eval mode (BatchNorm uses its running statistics, no dropout), on `device`; the
    backbone is left where it was."""
    was_training = backbone.training
    home = next(backbone.parameters(), torch.empty(0)).device
    backbone.eval()
    device = torch.device(device)
    model = _folded(backbone, channels_last).to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_fn, pin_memory=device.type == "cuda")
    autocast = autocast_for(precision, device)
    chunks = []
    with autocast:
        for inputs, _ in loader:
            inputs = move_data_to_device(inputs, device)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            chunks.append(model(inputs).float().cpu())
    backbone.train(was_training).to(home)
    return torch.cat(chunks) if chunks else torch.empty(0)


def _folded(backbone: nn.Module, channels_last: bool) -> nn.Module:
    """A copy with BatchNorm folded into the convolutions (torch.fx): the same features, faster on the CPU.
    Models without BatchNorm, or that fx cannot trace, are used as they are."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules()):
        return backbone
    try:
        folded = fuse(backbone)
    except Exception:  # symbolic tracing fails on data-dependent control flow; folding is only an optimisation
        return backbone
    return folded.to(memory_format=torch.channels_last) if channels_last else folded
