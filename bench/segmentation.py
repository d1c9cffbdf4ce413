"""Semantic segmentation on real composites: an FPN decoder on ImageNet MobileNetV2 against the same model from random
weights, the same recipe and budget, scored by mIoU on the test composites, with the wall-clock minutes of both runs
on this machine.

The composites are examples/segmentation/build.py's: Fashion-MNIST garments (1-4 per canvas, occluding) on a noisy
background, 11 classes with the background; 3000 train, 300 val, 500 test canvases of 128 px with garments of
24-64 px. Both runs follow examples/segmentation/segmentation.yaml: the full fine-tune with AdamW at 1e-3 (cosine
decay with warm-up), cross-entropy + Dice, smp's FPN decoder 64 wide, at 128 px, 4 epochs without augmentation.
docs/segmentation.md says why these defaults, and docs/benchmarks.md holds the results.

    .venv/bin/python bench/segmentation.py [train_images] [epochs] [image_size]
    .venv/bin/python bench/segmentation.py defaults [train_images] [epochs]

`defaults` trains this recipe (pretrained), a recipe holding only task, data and epochs, and that one with
`trainer.ema=0.999`, and evaluates the defaults run again with `--tta flip`. Last line: tuned_miou, defaults_miou,
defaults_gap (target ≥ −0.02), ema_miou and ema_gain, tta_miou and tta_gain, what `auto` chose, minutes.

image_size is the model's input: the 128 px canvases are resized to it (the data stays the same). Last line: JSON
with miou_pretrained, miou_random, pixel_acc, minutes (and per run), the per-class IoU, and the data's geometry.

Run it on a quiet machine: with other processes on the same cores, PyTorch's two OpenMP threads wait on each other
and a training step is several times slower than with one thread.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import OUT, defaults_against_tuned, report
from sft import fine_tune, load_recipe

BUILD = Path(__file__).parents[1] / "examples" / "segmentation" / "build.py"
CANVAS, SIDE = 128, (24, 64)  # the canvas side and garment sides in pixels (the geometry)


def composites(train: int) -> Path:
    """The bench's data set, built once and reused (the builder's marker says how it was made)."""
    spec = importlib.util.spec_from_file_location("segmentation_build", BUILD)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    out = OUT / f"segmentation-{train}-{CANVAS}-{SIDE[0]}-{SIDE[1]}"
    if not (out / builder.MARKER).exists():
        builder.build(out, train=train, val=300, test=500, size=CANVAS, seed=0, side=SIDE)
    return out


def tuned(data: Path, size: int, weights: str, epochs: int) -> list[str]:
    """The bench's recipe (examples/segmentation/segmentation.yaml's choices) as overrides."""
    return ["task=segmentation", f"data.train={data}/train", f"data.val={data}/val", f"data.test={data}/test",
            f"data.image_size={size}", "data.augment=none", "data.batch_size=16",
            "model.backbone=torchvision/mobilenet_v2", f"model.weights={weights}", "model.decoder=fpn",
            "model.decoder_channels=64", "strategy.name=full", "optim.lr=0.001", "optim.loss=ce+dice",
            f"trainer.epochs={epochs}"]


def defaults(train: int = 3000, epochs: int = 4) -> None:
    data = composites(train)
    given = ["task=segmentation", f"data.train={data}/train", f"data.val={data}/val", f"data.test={data}/test",
             f"trainer.epochs={epochs}"]
    report({**defaults_against_tuned(tuned(data, CANVAS, "imagenet", epochs), given, "miou"),
            "train_images": train, "epochs": epochs, "threads": torch.get_num_threads()})


def main() -> None:
    train = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    size = int(sys.argv[3]) if len(sys.argv) > 3 else CANVAS  # the model's input: the canvases resized to it
    data = composites(train)
    results, minutes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:  # the runs stay in bench/out (the README's report picture)
        for weights in ("imagenet", "none"):
            started = time.perf_counter()
            recipe = load_recipe(None, [*tuned(data, size, weights, epochs), "trainer.progress=false",
                                        f"run_dir={OUT}/segmentation-run-{weights}", f"cache_dir={tmp}/cache"])
            results[weights] = fine_tune(recipe, overwrite=True).metrics
            minutes[weights] = (time.perf_counter() - started) / 60
    pretrained, random = results["imagenet"], results["none"]
    report({"miou_pretrained": round(pretrained["test_miou"], 4), "miou_random": round(random["test_miou"], 4),
            "pixel_acc": round(pretrained["test_pixel_acc"], 4), "minutes": round(sum(minutes.values()), 2),
            "minutes_pretrained": round(minutes["imagenet"], 2), "minutes_random": round(minutes["none"], 2),
            "train_images": train, "epochs": epochs, "canvas": CANVAS, "image_size": size, "object_sides": list(SIDE),
            "decoder": "fpn",
            "iou_pretrained": {k: None if v is None else round(v, 3) for k, v in pretrained["test_iou"].items()},
            "train_images_per_second": pretrained["samples_per_second"], "precision": pretrained["precision"],
            "threads": torch.get_num_threads()})


if __name__ == "__main__":
    if sys.argv[1:2] == ["defaults"]:
        defaults(*(int(a) for a in sys.argv[2:4]))
    else:
        main()
