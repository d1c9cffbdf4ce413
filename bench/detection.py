"""Object detection on real composites: a detector on ImageNet MobileNetV2 against the same detector from random
weights, the same recipe and budget, scored by COCO mAP on the held-out test composites; wall-clock minutes of each
run on this machine (minutes_pretrained, minutes_random; `minutes` stays their total, as earlier reports gave it).

The composites are examples/detection/build.py's: Fashion-MNIST garments (1-6 per 160 px canvas, 20-72 px, about one
canvas in ten empty, tight boxes of the visible pixels) in 10 classes; 2000 train, 300 val, 300 test canvases by
default. The model sees them resized to 128 px (garments of 16-58 px: the 28 px originals are not enlarged much).
Both runs: batches of 16, AdamW at 2e-3, cosine decay with warm-up, fp32 (detectors are slower under CPU bf16
autocast), anchors from the training boxes, and the two-stage strategy (one epoch of FPN and heads on the frozen
backbone, then all of it with discriminative LRs), the usual recipe for a pretrained backbone; the random run gets the
same recipe, which spends its first epoch on frozen random features (`full` as the 7th argument gives both runs the
plain fine-tune; the 8th is data.augment, `none` by default).

Why these defaults (profiled on the shared 2-core CPU, one thread, load about 6; one training step of 8 images at
96 px, fp32): MobileNetV2's forward and backward take 0.32 s; FCOS with a 64-wide FPN adds 0.15 s, with a 128-wide
one 0.42 s (four 3x3 convolutions per branch on every level outweigh the backbone), RetinaNet about the same as
FCOS, SSDLite 0.07 s but its first epoch learned nothing (mAP50 0.001; SSD's matching and hard-negative mining are
slow to converge), Faster R-CNN about 4x FCOS's time. Shortened runs (1000 train images, 4 epochs, FCOS, FPN 64):
test mAP50 0.371 at 96 px (lr 1e-3), 0.350 at 96 px (lr 3e-3), 0.409 at 128 px (1.1x the time), and two-stage at
128 px 0.466 (validation after each epoch 0.212, 0.311, 0.449, 0.466; 1.2x the time of full at 128 px
under that load), from random weights with that recipe 0.085 (a gap of 0.38). Augmentation slows runs this short
(1000 images, two-stage, one thread): 4 epochs mAP50 0.466 with light augmentation, 0.540 without; 8 epochs 0.633
and 0.666. On the quiet 2-core machine (2000 images): 8 epochs, light augmentation, batch 8, lr 1e-3 gave 0.7135
in 16.0 minutes (pretrained run); 6 epochs without augmentation 0.7156 in 13.3 (15.4 img/s); the same with batches
of 16 at lr 2e-3 (the defaults) 0.7028 in 9.0 (22.9 img/s: two threads split a batch of 8 poorly).
Session 10: a 7th epoch gave 0.7050 (random 0.2504) but the bench took 26.2 minutes (the pretrained run 18.8 img/s
against the 6-epoch run's 22.9: a slower machine that day, or the full-phase epoch added), over the 25; 10 epochs on
one thread gave 0.7282 (validation mAP50 flat at 0.71 from the 6th epoch), so the defaults stay at 6.
Session 11 (one thread per run, the bench's recipe): more distinct composites at about the same steps do not help
(4000 x 3 epochs 0.6865, 6000 x 2 0.6592, against 2000 x 6's 0.7028), and neither does a larger input at the same
time: on 1000 composites, 6 epochs at 128 px 0.5678 (452 s), 12 epochs at 128 px 0.6743 (945 s), 6 epochs at 192 px
0.6689 (908 s; mAP 0.485 against 0.467). mAP50 follows the compute spent; 0.80 wants a GPU's budget.

    .venv/bin/python bench/detection.py [train_images] [epochs] [image_size] [detector] [fpn_channels] [lr]
        [strategy] [augment]
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
TRAIN, EPOCHS, SIZE, DETECTOR, FPN, LR, STRATEGY, AUGMENT = 2000, 6, 128, "fcos", 64, 0.002, "two-stage", "none"
BATCH = 16  # at two threads 1.5x the images/s of 8 on this model (22.9 against 15.4)


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
    args = sys.argv[1:] + [None] * 8
    train = int(args[0] or TRAIN)
    epochs = int(args[1] or EPOCHS)
    size = int(args[2] or SIZE)
    detector = args[3] or DETECTOR
    fpn = int(args[4] or FPN)
    lr = float(args[5] or LR)
    strategy = args[6] or STRATEGY
    augment = args[7] or AUGMENT
    data = composites(train)
    results, minutes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:  # the runs stay in bench/out (the README's report picture)
        for weights in ("imagenet", "none"):
            recipe = load_recipe(None, [
                "task=detection", f"data.train={data}/train", f"data.val={data}/val", f"data.test={data}/test",
                f"data.image_size={size}", f"data.batch_size={BATCH}", f"data.augment={augment}",
                "model.backbone=torchvision/mobilenet_v2",
                f"model.weights={weights}", f"model.detector={detector}", f"model.fpn_channels={fpn}",
                f"strategy.name={strategy}", "strategy.head_epochs=1", f"optim.lr={lr}", f"trainer.epochs={epochs}",
                "trainer.progress=false",
                f"run_dir={OUT}/detection-run-{weights}", f"cache_dir={tmp}/cache"])
            started = time.perf_counter()
            results[weights] = fine_tune(recipe, overwrite=True).metrics
            minutes[weights] = (time.perf_counter() - started) / 60
    pretrained, random = results["imagenet"], results["none"]
    report({"map50_pretrained": round(pretrained["test_map50"], 4), "map_pretrained": round(pretrained["test_map"], 4),
            "map50_random": round(random["test_map50"], 4), "map_random": round(random["test_map"], 4),
            "minutes_pretrained": round(minutes["imagenet"], 2), "minutes_random": round(minutes["none"], 2),
            "minutes": round(sum(minutes.values()), 2), "train_images": train, "val_and_test_images": held_out(train),
            "canvas": CANVAS, "epochs": epochs, "image_size": size, "detector": detector, "fpn_channels": fpn, "lr": lr,
            "strategy": strategy, "augment": augment, "anchor_sizes": pretrained["anchor_sizes"],
            "train_images_per_second": pretrained["samples_per_second"],
            "batch_size": BATCH, "precision": pretrained["precision"], "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
