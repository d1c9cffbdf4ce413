"""Image regression on rotated garments: predict the angle (uniform in [-60°, 60°]) by which a single Fashion-MNIST
garment was rotated, with ImageNet MobileNetV2 at 64 px, and check the 90 % split-conformal intervals.

The data: examples/regression/build.py (seeded) writes 4,000 training, 1,000 validation (from the official train
split, after the training digits) and 2,000 test garments (official test split) as PNGs with CSV manifests under
bench/out. Baselines: the training mean (MAE about 30°, the spread of a uniform angle) and ridge regression on the
frozen backbone's pooled features (scikit-learn's Ridge, its penalty chosen on the validation split; the same
features sft's head-only epochs use). sft: a full fine-tune (`examples/regression/regression.yaml`'s recipe on this
data), then `sft eval` on the test split at coverage 0.9, whose intervals were fitted on the validation residuals.
Targets: sft's test MAE at most half of ridge's; the intervals cover 0.88-0.92 of the test split (n = 1,000
validation residuals keep one fit's coverage within about ±0.01 of 0.9).

    .venv/bin/python bench/regression.py

Last line: JSON with mean_mae, ridge_mae, sft_mae, interval_coverage, mean_interval_width, sft_r2, ridge_alpha,
targets_met and minutes.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import OUT, report

ROOT = Path(__file__).resolve().parents[1]
DATA, RUN = OUT / "regression-data", OUT / "regression-run"
SIZES = {"train": 4000, "val": 1000, "test": 2000}


def data() -> Path:
    """The rotated garments, built once into bench/out."""
    if not (DATA / "test.csv").is_file():
        build = runpy.run_path(str(ROOT / "examples" / "regression" / "build.py"))["build"]
        build(DATA, **SIZES, size=64, seed=0, overwrite=True)
    return DATA


def angles(split: str) -> np.ndarray:
    return np.loadtxt(DATA / f"{split}.csv", delimiter=",", skiprows=1, usecols=1)


def ridge_baseline() -> tuple[float, float]:
    """(test MAE, chosen alpha) of scikit-learn's Ridge on the frozen backbone's pooled features (fp32, the eval
    transform at 64 px), alpha chosen on the validation split."""
    from sklearn.linear_model import Ridge

    from sft.data.images import ImageDataset, build_transforms
    from sft.models.vision import create_backbone
    from sft.tasks.regression.data import read_targets
    from sft.training.features import extract_features

    backbone = create_backbone("torchvision/mobilenet_v2", "imagenet")
    transform = build_transforms(backbone.preprocess, 64, "none")[1]
    features, targets = {}, {}
    for split in SIZES:
        samples = read_targets(DATA / f"{split}.csv", kind="image", target_columns=["angle"], column="path")
        features[split] = extract_features(backbone.module, ImageDataset(samples, transform), batch_size=128,
                                           precision="32-true", channels_last=False).numpy()
        targets[split] = samples.targets[:, 0]
    best = None
    for alpha in 10.0 ** np.arange(-3, 4.5, 0.5):
        model = Ridge(alpha=alpha).fit(features["train"], targets["train"])
        val = float(np.abs(model.predict(features["val"]) - targets["val"]).mean())
        if best is None or val < best[0]:
            best = (val, alpha, model)
    test = float(np.abs(best[2].predict(features["test"]) - targets["test"]).mean())
    return test, float(best[1])


def sft(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sft.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"sft {' '.join(map(str, args))} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    started = time.perf_counter()
    data()
    mean_mae = float(np.abs(angles("test") - angles("train").mean()).mean())
    ridge_mae, alpha = ridge_baseline()
    if not (RUN / "model.json").is_file():
        sft("train", ROOT / "examples" / "regression" / "regression.yaml", f"data.train={DATA / 'train.csv'}",
            f"data.val={DATA / 'val.csv'}", f"data.test={DATA / 'test.csv'}", "trainer.progress=false",
            f"run_dir={RUN}", f"cache_dir={OUT / 'cache'}", "--overwrite")
    sft("eval", RUN, "--coverage", "0.9", "--overwrite")
    scores = json.loads((RUN / "eval" / "metrics.json").read_text())
    trained = json.loads((RUN / "metrics.json").read_text())
    figures = {"mean_mae": round(mean_mae, 2), "ridge_mae": round(ridge_mae, 2), "sft_mae": round(scores["mae"], 2),
               "interval_coverage": round(scores["interval_coverage"], 4),
               "mean_interval_width": round(scores["mean_interval_width"], 2), "sft_r2": round(scores["r2"], 4),
               "ridge_alpha": alpha, "train_minutes": round(trained["train_seconds"] / 60, 1),
               "targets_met": bool(scores["mae"] <= 0.5 * ridge_mae and 0.88 <= scores["interval_coverage"] <= 0.92),
               "minutes": round((time.perf_counter() - started) / 60, 1)}
    report(figures)


if __name__ == "__main__":
    main()
