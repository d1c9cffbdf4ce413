"""Prediction sets on Fashion-MNIST: 90 % split-conformal sets (APS) fitted on a run's validation split, their
coverage measured on the official 10,000-image test split (target: 0.88-0.92), and their mean size.

The run: ImageNet MobileNetV2 at 64 px, a linear probe on 8,000 images of the official train split (a stratified
slice), 2,000 of them held out for validation: the split the temperature and the sets are fitted on. n = 2,000 keeps
one fit's coverage within about ±0.007 (one standard deviation) of 0.9; bench/serve.py's demo run holds out only 200
(±0.02), too few to land in the target range reliably. Trained once into bench/out; then `sft eval` on the test
split (the first one fits the sets and stores them in the run's model.json) and `sft predict --coverage 0.9` on 20
test images, whose sets must be those the evaluation counted.

    .venv/bin/python bench/conformal.py

Last line: JSON with set_coverage, mean_set_size, coverage_target, test_accuracy, val_samples, predict_agrees and
minutes (training, if not trained yet, and evaluation).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import torch

from common import CLASSES, FASHION, OUT, fashion_npz, report
from sft import fine_tune, load_recipe

RUN = OUT / "conformal-run"
COVERAGE = 0.9


def trained_run():
    """The linear probe of the module docstring, trained once into bench/out."""
    if (RUN / "model.json").is_file():
        return RUN
    recipe = load_recipe(None, [
        f"data.train={fashion_npz('train', 8000)}", "data.val_fraction=0.25",
        f"data.test={FASHION}/t10k-images-idx3-ubyte.gz", f"data.classes={CLASSES}", "data.image_size=64",
        "data.augment=none", "data.batch_size=128", "model.backbone=torchvision/mobilenet_v2",
        "model.weights=imagenet", "strategy.name=linear-probe", "trainer.epochs=1", "trainer.progress=false",
        f"run_dir={RUN}", f"cache_dir={OUT / 'cache'}"])
    fine_tune(recipe, overwrite=True)
    return RUN


def sft(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sft.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"sft {' '.join(map(str, args))} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def predict_agrees(run) -> bool:
    """`sft predict --coverage` on 20 test images gives the sets the stored fit gives the evaluation's model."""
    from sft.tasks.classification.conformal import run_fit, set_rows
    from sft.tasks.classification.serving import class_probabilities
    from sft.tasks.classification.task import ImageClassification
    from PIL import Image

    x = np.load(fashion_npz("t10k", 20))["x"]
    files = []
    for i, image in enumerate(x):
        files.append(OUT / f"conformal-{i}.png")
        Image.fromarray(image).save(files[-1])
    rows = json.loads(sft("predict", run, *files, "--coverage", COVERAGE, "--format", "json"))
    task = ImageClassification()
    model, info = task.load_trained(run)
    inputs = task.run_inputs(model, info)
    batch = torch.stack([inputs.eval(task.prediction_samples(info, [str(f) for f in files]))[i][0]
                         for i in range(len(files))])
    expected = set_rows(class_probabilities(model, batch, info.temperature), run_fit(run, info), COVERAGE,
                        info.classes)
    return [r["set"] for r in rows] == expected


def main() -> None:
    started = time.perf_counter()
    run = trained_run()
    sft("eval", run, "--coverage", COVERAGE, "--top-losses", "0", "--overwrite")
    minutes = (time.perf_counter() - started) / 60
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    fit = json.loads((run / "model.json").read_text())["extra"]["prediction_sets"]
    report({"set_coverage": round(metrics["set_coverage"], 4), "mean_set_size": round(metrics["mean_set_size"], 3),
            "coverage_target": metrics["coverage_target"], "test_accuracy": round(metrics["accuracy"], 4),
            "test_samples": metrics["samples"], "val_samples": len(fit["scores"]),
            "predict_agrees": predict_agrees(run), "in_target_range": 0.88 <= metrics["set_coverage"] <= 0.92,
            "minutes": round(minutes, 2)})


if __name__ == "__main__":
    main()
