"""The `auto` settings of the dense tasks (segmentation, detection), decided from the data and the machine.

A CPU trains a few epochs of small inputs and a GPU many epochs of large ones, and the best choices differ
(docs/benchmarks.md measures them on the CPU):
- `data.image_size`: the training images' median longer side, to a multiple of 32, at most 512 on a CPU and 1024 on
  a GPU: the data's own detail, to within that rounding;
- the decoder's or FPN's width: 64 on a CPU (the heads' cost grows with its square), 256 on a GPU (smp's and
  torchvision's own);
- `data.augment`: none on a CPU (a short run is under-fitted, and crops slow it), light on a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from sft.errors import UserError
from sft.recipe import Recipe

log = logging.getLogger("sft")

LONGEST = {"cpu": 512, "gpu": 1024}
WIDTH = {"cpu": 64, "gpu": 256}
AUGMENT = {"cpu": "none", "gpu": "light"}
SAMPLE = 200  # images whose size is read (headers only) when the data does not carry them


def resolve_dense(recipe: Recipe, width_key: str, sides: Sequence[int], device: torch.device, notes: dict) -> Recipe:
    """The recipe with its dense `auto` keys decided; `sides`: the longer side of (a sample of) the training images.
    What was decided, and why, goes to notes["auto"]."""
    machine = "cpu" if device.type == "cpu" else "gpu"
    data, model, chosen = {}, {}, {}
    if recipe.data.image_size == "auto":
        median = int(np.median(sides)) if len(sides) else LONGEST[machine]
        size = max(32, min(round(median / 32) * 32, LONGEST[machine]))
        data["image_size"] = size
        chosen["data.image_size"] = {"value": size, "for": f"median image side {median} px, at most "
                                                           f"{LONGEST[machine]} on a {machine}"}
    if recipe.data.augment == "auto":
        data["augment"] = AUGMENT[machine]
        chosen["data.augment"] = {"value": AUGMENT[machine], "for": f"a {machine}"}
    if getattr(recipe.model, width_key) == "auto":
        model[width_key] = WIDTH[machine]
        chosen[f"model.{width_key}"] = {"value": WIDTH[machine], "for": f"a {machine}"}
    if chosen:
        notes["auto"] = chosen
        log.warning("auto: " + "; ".join(f"{k} {v['value']} ({v['for']})" for k, v in chosen.items()))
    return recipe.model_copy(update={"data": recipe.data.model_copy(update=data),
                                     "model": recipe.model.model_copy(update=model)})


def file_sides(paths: Sequence[str], seed: int) -> list[int]:
    """The longer side of a seeded sample of SAMPLE image files, read from their headers."""
    chosen = np.random.default_rng(seed).permutation(len(paths))[:SAMPLE]
    sides = []
    for i in chosen:
        try:
            with Image.open(paths[i]) as image:
                sides.append(max(image.size))
        except OSError as e:  # missing, or not an image PIL reads
            raise UserError(f"{paths[i]}: cannot read the image ({e}); data.image_size auto reads the training "
                            f"images' sizes") from None
    return sides
