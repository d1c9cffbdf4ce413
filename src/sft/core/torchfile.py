"""Reading tensor files the user or a finished run gave us: PyTorch files weights-only, safetensors checked, and any
failure a UserError that names the file.

`torch.load(weights_only=True)` is passed explicitly, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 cannot turn it into a
plain unpickle. PyTorch's own refusal advises loading the file unsafely; that advice is never relayed.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from sft.errors import UserError


def load_torch_file(path: str | Path, hint: str, mmap: bool = False) -> Any:
    """torch.load, weights-only, on the CPU. `hint`: what the user can do instead, ending the error message.
    `mmap`: tensors stay in the file until read (to check names and shapes without reading a whole checkpoint)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # not a refused object: bytes that are no pickle at all
            raise UserError(f"{path}: damaged or not a PyTorch file ({_unsafe_reason(e)}); {hint}") from None
        raise UserError(f"{path}: refused: {_unsafe_reason(e)}. sft reads PyTorch files weights-only (tensors and "
                        f"plain values), so code inside a file never runs; {hint}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"{path}: damaged or not a PyTorch file ({_first_line(e)}); {hint}") from None
    except (IndexError, KeyError, TypeError, AttributeError, struct.error):  # other bytes (text) read as a pickle
        raise UserError(f"{path}: damaged or not a PyTorch file (neither PyTorch's zip format nor a pickle); "
                        f"{hint}") from None


def load_safetensors(path: str | Path, hint: str) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors, or a UserError naming the damaged file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: damaged or not a safetensors file ({_first_line(e)}); {hint}") from None


def _unsafe_reason(error: Exception) -> str:
    """What the file holds that weights-only loading refuses, without PyTorch's advice to load it unsafely."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "weights_only" not in line and "torch.load" not in line]
    return (useful[0].rstrip(".") if useful else "it holds objects other than tensors and plain values")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(error).__name__
