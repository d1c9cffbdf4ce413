"""Multi-label images on garment mosaics: which Fashion-MNIST classes a 2×2 mosaic shows (one to four of ten), with
ImageNet MobileNetV2 at 64 px, and the false-negative rate that conformal risk control promises.

The data: examples/multilabel/build.py (seeded) writes 4,000 training, 1,000 validation (from the official train
split, after the training garments) and 2,000 test mosaics (official test split) as PNGs with CSV manifests under
bench/out. Baseline: scikit-learn's OneVsRestClassifier(LogisticRegression()) on the frozen backbone's pooled
features (the same features sft's head-only epochs use), scored by test macro mAP. sft: a linear-probe run (its
one-vs-rest L-BFGS start on those features, L2 chosen on validation mAP) and a full fine-tune
(`examples/multilabel/multilabel.yaml`'s recipe on this data), each evaluated by `sft eval` on the test split with
`--fnr 0.1` (the threshold fitted on the validation split). `coverage` is the share of the test mosaics' true labels
kept at that threshold (1 - FNR), `coverage_target` 0.9. Targets: the probe's mAP at least the baseline's minus 0.01,
the fine-tune's above both, coverage within 0.88-0.92.

    .venv/bin/python bench/multilabel.py

Last line: JSON with baseline_map, probe_map, best_map, best_micro_f1, coverage, coverage_target, targets_met and
minutes.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, report

ROOT = Path(__file__).resolve().parents[1]
DATA, RUNS = OUT / "multilabel-data", {"probe": OUT / "multilabel-probe", "best": OUT / "multilabel-run"}
SIZES = {"train": 4000, "val": 1000, "test": 2000}
FNR = 0.1


def data() -> Path:
    """The mosaics, built once into bench/out."""
    if not (DATA / "test.csv").is_file():
        build = runpy.run_path(str(ROOT / "examples" / "multilabel" / "build.py"))["build"]
        build(DATA, **SIZES, size=64, seed=0, overwrite=True)
    return DATA


def baseline_map() -> float:
    """Test macro mAP of OneVsRestClassifier(LogisticRegression()) on the frozen backbone's pooled features (fp32, the
    eval transform at 64 px)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.multiclass import OneVsRestClassifier

    from sft.data.images import ImageDataset, build_transforms
    from sft.models.vision import create_backbone
    from sft.tasks.multilabel.data import read_multilabel
    from sft.training.features import extract_features

    backbone = create_backbone("torchvision/mobilenet_v2", "imagenet")
    transform = build_transforms(backbone.preprocess, 64, "none")[1]
    features, targets, classes = {}, {}, None
    for split in ("train", "test"):
        samples = read_multilabel(DATA / f"{split}.csv", kind="image", column="path", classes=classes)
        classes = samples.classes
        features[split] = extract_features(backbone.module, ImageDataset(samples, transform), batch_size=128,
                                           precision="32-true", channels_last=False).numpy()
        targets[split] = samples.targets
    model = OneVsRestClassifier(LogisticRegression(max_iter=1000)).fit(features["train"], targets["train"])
    return float(average_precision_score(targets["test"], model.predict_proba(features["test"]), average="macro"))


def sft(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sft.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"sft {' '.join(map(str, args))} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def trained(name: str, *overrides: str) -> dict:
    """`sft eval --fnr` of a run of the example's recipe on this data (trained once)."""
    run = RUNS[name]
    if not (run / "model.json").is_file():
        sft("train", ROOT / "examples" / "multilabel" / "multilabel.yaml", f"data.train={DATA / 'train.csv'}",
            f"data.val={DATA / 'val.csv'}", f"data.test={DATA / 'test.csv'}", "trainer.progress=false",
            f"run_dir={run}", f"cache_dir={OUT / 'cache'}", *overrides, "--overwrite")
    sft("eval", run, "--fnr", str(FNR), "--overwrite")
    return json.loads((run / "eval" / "metrics.json").read_text())


def main() -> None:
    started = time.perf_counter()
    data()
    baseline = baseline_map()
    probe = trained("probe", "strategy.name=linear-probe", "trainer.epochs=1")
    best = trained("best")
    coverage = 1 - best["fnr"]
    figures = {"baseline_map": round(baseline, 4), "probe_map": round(probe["map_macro"], 4),
               "best_map": round(best["map_macro"], 4), "best_micro_f1": round(best["micro_f1"], 4),
               "coverage": round(coverage, 4), "coverage_target": 1 - FNR, "fnr_threshold": round(best["threshold"], 4),
               "targets_met": bool(probe["map_macro"] >= baseline - 0.01 and best["map_macro"] > max(
                   baseline, probe["map_macro"]) and 0.88 <= coverage <= 0.92),
               "minutes": round((time.perf_counter() - started) / 60, 1)}
    report(figures)


if __name__ == "__main__":
    main()
