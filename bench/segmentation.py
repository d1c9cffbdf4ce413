"""Semantic segmentation on real composites: a Unet decoder on ImageNet MobileNetV2 against the same model from random
weights, the same recipe and budget, scored by mIoU on the test composites; wall-clock minutes for both, on this
machine.

The composites are examples/segmentation/build.py's: Fashion-MNIST garments (1-4 per canvas, 24-64 px, occluding)
on a noisy background, 11 classes with the background. Both runs: the full fine-tune with AdamW, cosine decay with
warm-up, cross-entropy + Dice, a Unet decoder of width 128 (half smp's default: on a CPU the decoder, not the
encoder, is most of the compute).

    .venv/bin/python bench/segmentation.py [train_images] [epochs] [image_size]
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import OUT, report
from sft import fine_tune, load_recipe

BUILD = Path(__file__).parents[1] / "examples" / "segmentation" / "build.py"


def composites(train: int, size: int) -> Path:
    """The bench's data set, built once and reused (the builder's marker says how it was made)."""
    spec = importlib.util.spec_from_file_location("segmentation_build", BUILD)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    out = OUT / f"segmentation-{train}-{size}"
    if not (out / builder.MARKER).exists():
        builder.build(out, train=train, val=300, test=500, size=size, seed=0)
    return out


def main() -> None:
    train = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 96
    data = composites(train, size)
    results, started = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the runs stay in bench/out (the README's report picture)
        for weights in ("imagenet", "none"):
            recipe = load_recipe(None, [
                "task=segmentation", f"data.train={data}/train", f"data.val={data}/val", f"data.test={data}/test",
                f"data.image_size={size}", "data.batch_size=16", "model.backbone=torchvision/mobilenet_v2",
                f"model.weights={weights}", "model.decoder=unet", "model.decoder_channels=128", "strategy.name=full",
                "optim.lr=0.002", "optim.loss=ce+dice", f"trainer.epochs={epochs}", "trainer.progress=false",
                f"run_dir={OUT}/segmentation-run-{weights}", f"cache_dir={tmp}/cache"])
            results[weights] = fine_tune(recipe, overwrite=True).metrics
    minutes = (time.perf_counter() - started) / 60
    pretrained, random = results["imagenet"], results["none"]
    report({"miou_pretrained": round(pretrained["test_miou"], 4), "miou_random": round(random["test_miou"], 4),
            "pixel_acc": round(pretrained["test_pixel_acc"], 4), "minutes": round(minutes, 2),
            "train_images": train, "epochs": epochs, "image_size": size,
            "train_images_per_second": pretrained["samples_per_second"], "precision": pretrained["precision"],
            "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
