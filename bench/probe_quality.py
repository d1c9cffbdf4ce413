"""sft's default linear probe against scikit-learn's LogisticRegression on the same cached features.

Two real tasks: Fashion-MNIST (stratified 5,000 train, of which sft holds out 10 % for validation, and 2,000 test, at
64 px) on the shipped ImageNet MobileNetV2, and the 10-way fortunes example on the shipped all-MiniLM-L6-v2. sft runs
`strategy.name=linear-probe` with every other setting at its default (the head starts from the converged probe,
L2 chosen on val); scikit-learn's LogisticRegression gets the same chance: its C is chosen on the same validation
split from a grid, fitted on sft's cached train features (the same samples sft trains on). Test accuracy and
seconds of both (sft: the whole `fine_tune`; sklearn: the grid fits on features already cached); `min_gap` is the
smaller sft - sklearn difference. `*_sklearn_default` is LogisticRegression() at C=1, for reference.

    .venv/bin/python bench/probe_quality.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import CLASSES, OUT, fashion_npz, report
from sft import fine_tune, load_recipe
from sft.tasks import get_task
from sft.training.prepare import prepare

sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "fortunes"))
from build import TOPICS, build  # noqa: E402


C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def sklearn_accuracy(recipe) -> dict:
    """LogisticRegression on the frozen backbone's features of the run's own train split, C chosen on its val split,
    scored on test; and the default C=1 fit."""
    from sklearn.linear_model import LogisticRegression
    p = prepare(get_task(recipe.task), recipe)  # its features come from the cache the sft run filled
    x = {s: p.data.features(s, p.data.eval_sets[s]).numpy() for s in ("train", "val", "test")}
    y = {s: getattr(p.splits, s).labels for s in ("train", "val", "test")}
    started = time.perf_counter()
    fits = {c: LogisticRegression(C=c, max_iter=5000).fit(x["train"], y["train"]) for c in C_GRID}
    best = max(C_GRID, key=lambda c: fits[c].score(x["val"], y["val"]))
    return {"tuned": float(fits[best].score(x["test"], y["test"])), "C": best,
            "default": float(fits[1.0].score(x["test"], y["test"])),
            "seconds": round(time.perf_counter() - started, 2)}


def main() -> None:
    fortunes = OUT / "fortunes"
    build(TOPICS.split(","), fortunes)
    tasks = {
        "fashion": ["data.image_size=64", f"data.train={fashion_npz('train', 5000)}",
                    f"data.test={fashion_npz('t10k', 2000)}", f"data.classes={CLASSES}"],
        "fortunes": ["task=text-classification", f"data.train={fortunes}/train.csv",
                     f"data.test={fortunes}/test.csv", "data.max_length=128", "model.backbone=minilm"],
    }
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in tasks.items():
            recipe = load_recipe(None, overrides + ["strategy.name=linear-probe", "trainer.progress=false",
                                                    f"cache_dir={tmp}/cache", f"run_dir={tmp}/{name}"])
            started = time.perf_counter()
            metrics = fine_tune(recipe).metrics
            figures[f"{name}_sft"] = round(metrics["test_acc"], 4)
            figures[f"{name}_sft_seconds"] = round(time.perf_counter() - started, 2)
            figures[f"{name}_probe"] = metrics.get("probe")
            sklearn = sklearn_accuracy(recipe)
            figures[f"{name}_sklearn"] = round(sklearn["tuned"], 4)
            figures[f"{name}_sklearn_C"] = sklearn["C"]
            figures[f"{name}_sklearn_default"] = round(sklearn["default"], 4)
            figures[f"{name}_sklearn_seconds"] = sklearn["seconds"]
            print(f"{name}: sft {figures[f'{name}_sft']}, sklearn {figures[f'{name}_sklearn']}", flush=True)
    figures["min_gap"] = round(min(figures[f"{n}_sft"] - figures[f"{n}_sklearn"] for n in tasks), 4)
    report(figures)


if __name__ == "__main__":
    main()
