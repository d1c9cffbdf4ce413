"""Object detection on real composites: a detector on ImageNet MobileNetV2 against the same detector from random
weights, the same recipe and budget, scored by COCO mAP on the held-out test composites, with the wall-clock minutes
of each run on this machine.

The composites are examples/detection/build.py's: Fashion-MNIST garments (1-6 per 160 px canvas, 20-72 px, about one
canvas in ten empty, tight boxes of the visible pixels) in 10 classes; 2000 train, 300 val, 300 test canvases by
default. The model sees them resized to 128 px. Both runs follow examples/detection/detection.yaml: FCOS with a
64-wide FPN, batches of 16, AdamW at 2e-3, cosine decay with warm-up, fp32, anchors from the training boxes, 6
epochs, and the two-stage strategy (one epoch of FPN and heads on the frozen backbone, then all of it with
discriminative LRs); the random run gets the same recipe. `full` as the 7th argument gives both runs the plain
fine-tune; the 8th is data.augment (`none` by default). docs/detection.md says why these defaults, and
docs/benchmarks.md holds the results.

    .venv/bin/python bench/detection.py [train_images] [epochs] [image_size] [detector] [fpn_channels] [lr]
        [strategy] [augment]

    .venv/bin/python bench/detection.py defaults [train_images] [epochs] [ema]

    .venv/bin/python bench/detection.py mosaic [share ...]

`defaults` trains this recipe (pretrained), a recipe holding only task, data and epochs, and that one with
`trainer.ema=EMA` (0.999; 0: not trained), and evaluates the defaults run again with `--tta flip`; its last line:
tuned_map50, defaults_map50, defaults_gap (target ≥ −0.02), ema_map50 and ema_gain, tta_map50 and tta_gain, what
`auto` chose, minutes.

`mosaic` trains the recipe of only task, data and epochs as it is and with `data.mosaic=SHARE` for each share given
(0.5 and 1.0; the last epoch plain, `data.close_mosaic: 1`); its last line: each run's map50 and map, each
mosaic_SHARE_gain (mAP50), minutes.

Last line otherwise: JSON with map50_pretrained, map_pretrained, map50_random, map_random, minutes_pretrained,
minutes_random, minutes (their total), train_images and val_and_test_images.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import OUT, defaults_against_tuned, report, trained
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


def defaults(train: int = TRAIN, epochs: int = EPOCHS, ema: float = 0.999) -> None:
    data = composites(train)
    splits = [f"data.train={data}/train", f"data.val={data}/val", f"data.test={data}/test"]
    tuned = ["task=detection", *splits, f"data.image_size={SIZE}", f"data.batch_size={BATCH}",
             f"data.augment={AUGMENT}", "model.backbone=torchvision/mobilenet_v2", f"model.detector={DETECTOR}",
             f"model.fpn_channels={FPN}", f"strategy.name={STRATEGY}", "strategy.head_epochs=1", f"optim.lr={LR}",
             f"trainer.epochs={epochs}"]
    report({**defaults_against_tuned(tuned, ["task=detection", *splits, f"trainer.epochs={epochs}"], "map50", ema),
            "train_images": train, "epochs": epochs, "threads": torch.get_num_threads()})


def mosaic(shares: list[float], train: int = TRAIN, epochs: int = EPOCHS) -> None:
    """The defaults recipe (task, data, epochs) trained as it is and with each `data.mosaic` share (the last epoch
    plain: `data.close_mosaic` 1, the default), test mAP50 and mAP of each."""
    data = composites(train)
    given = ["task=detection", f"data.train={data}/train", f"data.val={data}/val", f"data.test={data}/test",
             f"trainer.epochs={epochs}"]
    scores, minutes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("defaults", []), *((f"mosaic_{share}", [f"data.mosaic={share}"]) for share in shares)):
            run, minutes[name] = trained([*given, *extra], Path(tmp) / name, Path(tmp) / "cache")
            scores[name] = {k: round(run.metrics[f"test_{k}"], 4) for k in ("map50", "map")}
            print(f"{name}: test mAP50 {scores[name]['map50']} in {minutes[name]} min", flush=True)
    base = scores["defaults"]["map50"]
    report({**{f"{name}_{k}": v for name, s in scores.items() for k, v in s.items()},
            **{f"mosaic_{share}_gain": round(scores[f"mosaic_{share}"]["map50"] - base, 4) for share in shares},
            "minutes": minutes, "train_images": train, "epochs": epochs, "threads": torch.get_num_threads()})


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
    if sys.argv[1:2] == ["defaults"]:
        defaults(*(int(a) for a in sys.argv[2:4]), *(float(a) for a in sys.argv[4:5]))
    elif sys.argv[1:2] == ["mosaic"]:
        mosaic([float(a) for a in sys.argv[2:]] or [0.5, 1.0])
    else:
        main()
