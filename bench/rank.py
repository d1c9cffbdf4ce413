"""Do `sft rank`'s scores predict which backbone fine-tunes best? Six candidates on Fashion-MNIST (ImageNet
MobileNetV2 and EfficientNet-Lite0/1/2, randomly initialised EfficientNet-Lite0 and -Lite2): each score on the
training data, against the test accuracy after the same fine-tune recipe (a linear probe, 96 px, 15 epochs on
cached features; 2,000 training images, 10 % held out for validation, 2,000 test images). Kendall tau between each
score and that accuracy (1 = the same order).

The ranking's sample is the whole training split, so its features are the probe's (computed once, cached).

Not a candidate: randomly initialised torchvision MobileNetV2. In eval mode (fresh BatchNorm statistics) its features
are about 1e-9, so sft's probe, which does not normalise its input, learns nothing (test accuracy 0.10 in a first
run at 64 px), while every score here is scale-invariant and rates those features close to the pretrained ones
(standardised, a probe on them reaches 0.81): a fault of the fine-tune recipe, not of the features.

    .venv/bin/python bench/rank.py
"""

from __future__ import annotations

import tempfile
import time

from scipy.stats import kendalltau

from common import CLASSES, fashion_npz, report
from sft import fine_tune, load_recipe
__import__("sft.engine")  # Lightning's import is not per-run work: keep it out of the timings
from sft.rank import SCORES, rank_backbones

CANDIDATES = ["torchvision/mobilenet_v2@imagenet", "timm/tf_efficientnet_lite0@imagenet",
              "timm/tf_efficientnet_lite1@imagenet", "timm/tf_efficientnet_lite2@imagenet",
              "timm/tf_efficientnet_lite0@none", "timm/tf_efficientnet_lite2@none"]


def main() -> None:
    train, test = fashion_npz("train", 2000), fashion_npz("t10k", 2000)
    with tempfile.TemporaryDirectory() as tmp:
        common = [f"data.train={train}", f"data.test={test}", f"data.classes={CLASSES}", "data.image_size=96",
                  "data.augment=none", "strategy.name=linear-probe", "optim.lr=0.003", "trainer.epochs=15",
                  "trainer.progress=false", f"cache_dir={tmp}/cache", "seed=0"]
        started = time.perf_counter()
        ranking = rank_backbones(load_recipe(None, [*common, f"run_dir={tmp}/rank"]), CANDIDATES, f"{tmp}/rank-out",
                                 limit=2000)
        rank_s = time.perf_counter() - started
        if ranking["failed"]:
            raise SystemExit(f"candidates failed to load: {ranking['failed']}")
        accuracy = {}
        for row in ranking["ranked"]:
            backbone, weights = row["backbone"], row["weights"]
            run = fine_tune(load_recipe(None, [*common, f"model.backbone={backbone}", f"model.weights={weights}",
                                               f"run_dir={tmp}/{backbone.replace('/', '_')}-{weights}"]))
            accuracy[row["candidate"]] = run.metrics["test_acc"]
            print(f"{row['candidate']:>36}: test_acc {accuracy[row['candidate']]:.4f} logme {row['logme']:.4f} "
                  f"hscore {row['hscore']:.3f} nce {row['nce']:.3f} leep {row['leep']:.3f} "
                  f"knn {row['knn_acc']:.3f} probe {row['probe_acc']:.3f} ({row['seconds']:.0f} s)", flush=True)
    rows = ranking["ranked"]
    acc = [accuracy[r["candidate"]] for r in rows]
    figures = {}
    for score in SCORES:
        tau = kendalltau([r[score] for r in rows], acc).statistic
        figures[f"kendall_tau_{score}"] = round(float(tau), 3)
    figures["test_acc"] = {r["candidate"]: round(accuracy[r["candidate"]], 4) for r in rows}
    figures["logme"] = {r["candidate"]: r["logme"] for r in rows}
    figures["rank_seconds_per_candidate"] = round(rank_s / len(rows), 1)
    figures["samples"] = ranking["samples"]
    report(figures)


if __name__ == "__main__":
    main()
