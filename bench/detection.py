"""Object detection on real composites: FCOS on ImageNet MobileNetV2 against the same detector from random weights,
the same recipe and budget, scored by COCO mAP on the test composites; wall-clock minutes of each run on this machine
(minutes_pretrained, minutes_random; `minutes` stays their total, as earlier reports gave it).

The composites are examples/detection/build.py's: Fashion-MNIST garments (1-6 per 160 px canvas, 20-72 px, about one
canvas in ten empty, tight boxes of the visible pixels) in 10 classes; the model sees them resized to `image_size`.
Both runs: the full fine-tune with AdamW, cosine decay with warm-up, the FPN and heads 128 wide, fp32 (detectors are
slower under CPU bf16 autocast), anchors from the training boxes.

    .venv/bin/python bench/detection.py [train_images] [epochs] [image_size] [detector]
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

BUILD = Path(__file__).parents[1] / "examples" / "detection" / "build.py"
CANVAS = 160


def held_out(train: int) -> int:
    """Images in each of val and test: a fifth of train, 20 to 300."""
    return min(300, max(20, train // 5))


def composites(train: int) -> Path:
    """The bench's data set, built once and reused (the builder's marker says how it was made)."""
    spec = importlib.util.spec_from_file_location("detection_build", BUILD)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    out = OUT / f"detection-{train}-{CANVAS}"
    if not (out / builder.MARKER).exists():
        builder.build(out, train=train, val=held_out(train), test=held_out(train), size=CANVAS, seed=0)
    return out


def main() -> None:
    train = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    detector = sys.argv[4] if len(sys.argv) > 4 else "fcos"
    data = composites(train)
    results, minutes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:  # the runs stay in bench/out (the README's report picture)
        for weights in ("imagenet", "none"):
            recipe = load_recipe(None, [
                "task=detection", f"data.train={data}/train", f"data.val={data}/val", f"data.test={data}/test",
                f"data.image_size={size}", "data.batch_size=8", "model.backbone=torchvision/mobilenet_v2",
                f"model.weights={weights}", f"model.detector={detector}", "model.fpn_channels=128",
                "strategy.name=full", "optim.lr=0.001", f"trainer.epochs={epochs}", "trainer.progress=false",
                f"run_dir={OUT}/detection-run-{weights}", f"cache_dir={tmp}/cache"])
            started = time.perf_counter()
            results[weights] = fine_tune(recipe, overwrite=True).metrics
            minutes[weights] = (time.perf_counter() - started) / 60
    pretrained, random = results["imagenet"], results["none"]
    report({"map50_pretrained": round(pretrained["test_map50"], 4), "map_pretrained": round(pretrained["test_map"], 4),
            "map50_random": round(random["test_map50"], 4), "map_random": round(random["test_map"], 4),
            "minutes_pretrained": round(minutes["imagenet"], 2), "minutes_random": round(minutes["none"], 2),
            "minutes": round(sum(minutes.values()), 2), "train_images": train, "val_and_test_images": held_out(train),
            "canvas": CANVAS, "epochs": epochs, "image_size": size, "detector": detector,
            "anchor_sizes": pretrained["anchor_sizes"], "train_images_per_second": pretrained["samples_per_second"],
            "precision": pretrained["precision"], "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
