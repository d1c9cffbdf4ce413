"""Flip test-time augmentation for image classification: the demo's recipe (examples/fashion_mnist.yaml: ImageNet
MobileNetV2, 6,000 Fashion-MNIST training images at 64 px, two-stage, 4 epochs) trained with `data.augment` none
(the recipe's own) and light (random resized crops and horizontal flips), each evaluated on the official 10,000-image
test split by `sft eval` without and with `--tta flip`. Each evaluation fits its temperature and prediction sets on
the run's validation split (600 images), the flipped one on the averaged logits, so the calibrated NLL, ECE and the
90 % sets compare like with like.

    .venv/bin/python bench/tta.py [augment ...]

(default: none light.) About 8 minutes on 2 CPU cores: two trainings of about 1.5 minutes, four evaluations, the
flipped ones twice the forward passes. Last line: JSON with, for each augment, the test accuracy, calibrated NLL, ECE,
mean 90 % set size and the seconds of the whole `sft eval` (validation pass, test pass and report) without and with
the flip, and `tta_gain` (accuracy with minus without).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import report
from sft import fine_tune, load_recipe
from sft.tasks import get_task

RECIPE = Path(__file__).parents[1] / "examples" / "fashion_mnist.yaml"
KEPT = ("accuracy", "nll_calibrated", "ece_calibrated", "mean_set_size", "set_coverage")


def main(augments: list[str]) -> None:
    task, figures = get_task("image-classification"), {}
    with tempfile.TemporaryDirectory() as tmp:
        for augment in augments:
            started = time.perf_counter()
            run = fine_tune(load_recipe(RECIPE, [f"data.augment={augment}", "trainer.progress=false",
                                                 f"run_dir={tmp}/{augment}", f"cache_dir={tmp}/cache"]))
            figures[f"{augment}_train_minutes"] = round((time.perf_counter() - started) / 60, 2)
            for tta in ("none", "flip"):
                started = time.perf_counter()
                _, summary = task.evaluate(run.dir, None, Path(tmp) / f"{augment}-{tta}",
                                           task.options["eval"](tta=tta, top_losses=0), overwrite=True,
                                           batch_size=128, progress=False)
                figures.update({f"{augment}_{tta}_{key}": round(summary[key], 4) for key in KEPT})
                figures[f"{augment}_{tta}_eval_seconds"] = round(time.perf_counter() - started, 1)
                print(f"augment {augment}, tta {tta}: accuracy {summary['accuracy']:.4f}", flush=True)
            figures[f"{augment}_tta_gain"] = round(figures[f"{augment}_flip_accuracy"]
                                                   - figures[f"{augment}_none_accuracy"], 4)
    report(figures)


if __name__ == "__main__":
    main(sys.argv[1:] or ["none", "light"])
