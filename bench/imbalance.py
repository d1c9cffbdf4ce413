"""Long-tailed Fashion-MNIST (imbalance ratio 100, seeded), tested on a balanced slice of the official test split:
balanced accuracy and macro-F1 of none / class-weights / oversample / undersample / focal, 3 seeds each.

All runs are linear probes of ImageNet MobileNetV2 at 64 px, so they share one cached feature pass and differ only in
how the imbalance is handled (the seed changes the head's initialisation, the validation split and the data order).

    .venv/bin/python bench/imbalance.py
"""

from __future__ import annotations

import statistics
import tempfile

import numpy as np

from common import CLASSES, OUT, read_fashion, fashion_npz, report
from sft import fine_tune, load_recipe
import sft.training.fit  # noqa: F401,E402

RATIO, LARGEST, SEEDS = 100, 2000, (0, 1, 2)
METHODS = {"none": [], "class-weights": ["data.balance=class-weights"], "oversample": ["data.balance=oversample"],
           "undersample": ["data.balance=undersample"], "focal": ["optim.loss=focal"]}


def long_tailed(seed: int = 0):
    """Class c keeps LARGEST * RATIO**(-c/9) training images: 2000, 1200, ..., 20."""
    x, y = read_fashion("train")
    rng = np.random.default_rng(seed)
    counts = [int(round(LARGEST * RATIO ** (-c / 9))) for c in range(10)]
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False) for c, n in enumerate(counts)])
    OUT.mkdir(exist_ok=True)
    path = OUT / "fashion_longtail.npz"
    np.savez(path, x=x[idx], y=y[idx])
    return path, counts


def main() -> None:
    train, counts = long_tailed()
    test = fashion_npz("t10k", 2000)
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for method, overrides in METHODS.items():
            for seed in SEEDS:
                recipe = load_recipe(None, [
                    f"data.train={train}", f"data.test={test}", f"data.classes={CLASSES}", "data.image_size=64",
                    "data.augment=none", "data.val_fraction=0.2", "strategy.name=linear-probe", "optim.lr=0.003",
                    "trainer.epochs=15", "trainer.progress=false", f"seed={seed}",
                    f"run_dir={tmp}/{method}-{seed}", f"cache_dir={tmp}/cache", *overrides])
                m = fine_tune(recipe).metrics
                results[method].append((m["test_balanced_acc"], m["test_macro_f1"]))
                print(f"{method:>14} seed {seed}: balanced acc {m['test_balanced_acc']:.4f} "
                      f"macro-F1 {m['test_macro_f1']:.4f}", flush=True)
    mean = {m: statistics.mean(b for b, _ in r) for m, r in results.items()}
    spread = statistics.mean(statistics.pstdev(b for b, _ in r) for r in results.values())
    best = max((m for m in METHODS if m != "none"), key=mean.get)
    report({"train_counts": counts, **{f"balanced_acc_{m.replace('-', '_')}": round(v, 4) for m, v in mean.items()},
            **{f"macro_f1_{m.replace('-', '_')}": round(statistics.mean(f for _, f in r), 4)
               for m, r in results.items()},
            "balanced_acc_best": round(mean[best], 4), "best_method": best, "seed_spread": round(spread, 4),
            "gain_over_spread": round((mean[best] - mean["none"]) / max(spread, 1e-9), 2)})


if __name__ == "__main__":
    main()
