"""Numeric precision and memory layout: bf16 and channels_last where the hardware makes them pay."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(requested: str, accelerator: str) -> str:
    """auto: bf16-mixed on a GPU or CPU with native bf16 (several times faster for convnets), else fp32."""
    if requested != "auto":
        return requested
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def autocast_for(precision: str, device: torch.device | str = "cpu"):
    """The autocast context of a Lightning precision name, for passes outside the Trainer (features, evaluation)."""
    device = torch.device(device)
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def use_channels_last(setting: bool | str, module: torch.nn.Module) -> bool:
    """Resolve trainer.channels_last and convert the module: NHWC is the fast layout of oneDNN/cuDNN convolutions."""
    if setting == "auto":
        setting = any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    if setting:
        module.to(memory_format=torch.channels_last)
    return bool(setting)
