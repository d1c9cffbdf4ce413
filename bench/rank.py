"""Do `sft rank`'s scores predict which backbone fine-tunes best? Eight candidates on Fashion-MNIST: MobileNetV2 and
EfficientNet-Lite0/1/2, each with ImageNet weights and randomly initialised. Each score on the training data, against
the test accuracy after the same fine-tune recipe, for two recipes at 96 px on the same training images (10 % held
out for validation), tested on all 10,000 official test images:

- full: every layer fine-tuned, 5 epochs, AdamW 1e-3, cosine schedule, light augmentation — what LogME's authors
  (You et al. 2021) and tllib's benchmark rank against; gives `kendall_tau_<score>`.
- probe: a linear probe on cached frozen features, 15 epochs, AdamW 3e-3; gives `kendall_tau_<score>_probe`.

Kendall tau between each score and the test accuracy (1 = the same order). The ranking's sample is the whole
training split, so its features are the probe's (computed once, cached). A randomly initialised MobileNetV2 gives
features near zero in eval mode, which the unnormalised probe cannot use while every score is scale-invariant, so
the `_probe` figures are the weaker comparison (docs/benchmarks.md).

    .venv/bin/python bench/rank.py [train images, default 2000]
"""

from __future__ import annotations

import sys
import tempfile
import time

from scipy.stats import kendalltau

from common import CLASSES, fashion_npz, report
from sft import fine_tune, load_recipe
__import__("sft.training.fit")  # Lightning's import is not per-run work: keep it out of the timings
from sft.tasks import get_task
from sft.tasks.classification.tools.rank import SCORES, rank_backbones

CANDIDATES = [f"{backbone}@{weights}" for weights in ("imagenet", "none")
              for backbone in ("torchvision/mobilenet_v2", "timm/tf_efficientnet_lite0", "timm/tf_efficientnet_lite1",
                               "timm/tf_efficientnet_lite2")]
RECIPES = {
    "full": ["strategy.name=full", "data.augment=light", "optim.lr=0.001", "trainer.epochs=5"],
    "probe": ["strategy.name=linear-probe", "data.augment=none", "optim.lr=0.003", "trainer.epochs=15"],
}


def main(train_n: int = 2000) -> None:
    train, test = fashion_npz("train", train_n), fashion_npz("t10k", None)
    with tempfile.TemporaryDirectory() as tmp:
        common = [f"data.train={train}", f"data.test={test}", f"data.classes={CLASSES}", "data.image_size=96",
                  "trainer.progress=false", f"cache_dir={tmp}/cache", "seed=0"]
        started = time.perf_counter()
        ranking = rank_backbones(get_task("image-classification"),
                                 load_recipe(None, [*common, *RECIPES["probe"], f"run_dir={tmp}/rank"]), CANDIDATES,
                                 f"{tmp}/rank-out", limit=train_n)
        rank_s = time.perf_counter() - started
        if ranking["failed"]:
            raise SystemExit(f"candidates failed to load: {ranking['failed']}")
        rows = ranking["ranked"]
        accuracy = {recipe: {} for recipe in RECIPES}
        for row in rows:
            for recipe, overrides in RECIPES.items():
                run_dir = f"{tmp}/{recipe}-{row['backbone'].replace('/', '_')}-{row['weights']}"
                run = fine_tune(load_recipe(None, [*common, *overrides, f"model.backbone={row['backbone']}",
                                                   f"model.weights={row['weights']}", f"run_dir={run_dir}"]))
                accuracy[recipe][row["candidate"]] = run.metrics["test_acc"]
                print(f"{row['candidate']:>36} {recipe:>5}: test_acc {run.metrics['test_acc']:.4f} "
                      f"({run.metrics['train_seconds']:.0f} s)", flush=True)
            print(f"{'':>36} scores: " + " ".join(f"{s} {row[s]:.4f}" for s in SCORES), flush=True)
    figures = {}
    for recipe in RECIPES:
        acc = [accuracy[recipe][r["candidate"]] for r in rows]
        for score in SCORES:
            tau = kendalltau([r[score] for r in rows], acc).statistic
            figures[f"kendall_tau_{score}" + ("" if recipe == "full" else f"_{recipe}")] = round(float(tau), 3)
    for recipe in RECIPES:
        figures[f"test_acc_{recipe}"] = {r["candidate"]: round(accuracy[recipe][r["candidate"]], 4) for r in rows}
    figures["logme"] = {r["candidate"]: r["logme"] for r in rows}
    figures["rank_seconds_per_candidate"] = round(rank_s / len(rows), 1)
    figures["samples"] = ranking["samples"]
    report(figures)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
