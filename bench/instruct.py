"""Instruction tuning of the shipped SmolLM2-135M-Instruct on the fortunes topics (examples/instruct/build.py: "Which
topic is this quote from? Answer with one word from: ..."): exact-match accuracy and the share of answers inside the
10 topics, before and after, on a seeded subset of the test split.

The example's recipe (examples/instruct/fortunes.yaml: LoRA rank 16 on every projection, lr 5e-4) is the tuned one.
`defaults` also trains a recipe that holds only task, data and model, so every other choice (LoRA targets, rank,
learning rate, epochs) is sft's default, and compares the two; targets: defaults_exact_match ≥ tuned_exact_match −
0.05 and defaults_in_set ≥ 0.95.

The subsets are the first N of the builder's seeded order (quotes of at most 300 characters), so every run sees the
same conversations.

    .venv/bin/python bench/instruct.py [train] [test] [epochs]     # the example's recipe; default 256 200 1
    .venv/bin/python bench/instruct.py defaults [train] [test]     # both recipes; default 96 200 (the tuned: 1 epoch)
    .venv/bin/python bench/instruct.py steps                       # the defaults at 96 and 48 questions, by epochs
    .venv/bin/python bench/instruct.py full                        # the defaults as a full fine-tune, by lr

`steps` is the measurement behind `trainer.epochs: auto`: the defaults recipe with trainer.epochs set, 96 questions
at 3 and 8 epochs and 48 at 3 and 6, each scored on the same 200 test questions. `full` is the measurement behind
`optim.lr: auto` for a full fine-tune: the defaults with `strategy.name=full` at 5e-5 and 2e-5, 96 questions.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import OUT, report
from sft import load_recipe
from sft.tasks import get_task
from sft.training.fit import fine_tune

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "instruct" / "fortunes.yaml"
sys.path.insert(0, str(ROOT / "examples" / "instruct"))
from build import fortunes  # noqa: E402


def subset(source: Path, target: Path, n: int) -> int:
    rows = source.read_text(encoding="utf-8").splitlines()[:n]
    target.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return len(rows)


def data(train: int, test: int) -> tuple[Path, Path, int, int]:
    out = OUT / "instruct"
    fortunes(out)
    n_train = subset(out / "train.jsonl", out / f"train-{train}.jsonl", train)
    n_test = subset(out / "test.jsonl", out / f"test-{test}.jsonl", test)
    return out / f"train-{train}.jsonl", out / f"test-{test}.jsonl", n_train, n_test


def tune_and_score(recipe_file: Path | None, overrides: list[str]) -> dict:
    """Train the recipe in a scratch folder and score it with `sft eval` on its test split."""
    task = get_task("causal-lm")
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(recipe_file, [*overrides, "trainer.progress=false", f"run_dir={tmp}/run"])
        started = time.perf_counter()
        run = fine_tune(task, recipe)
        trained = time.perf_counter()
        _, summary = task.evaluate(run.dir, None, None, task.options["eval"](top_losses=8), overwrite=False,
                                   batch_size=16, progress=False)
        done = time.perf_counter()
    return {"exact_match": summary["exact_match"], "in_set": summary["in_label_set"],
            "exact_match_before": summary.get("exact_match_before"), "in_set_before": summary.get("in_label_set_before"),
            "test_loss": summary["loss"], "test_perplexity": summary["perplexity"], "epochs": run.metrics["epochs"],
            "lr_auto": run.metrics.get("lr_auto"), "epochs_auto": run.metrics.get("epochs_auto"),
            "train_minutes": round((trained - started) / 60, 2), "minutes": round((done - started) / 60, 2)}


def example(train: int = 256, test: int = 200, epochs: int = 1) -> None:
    train_file, test_file, n_train, n_test = data(train, test)
    s = tune_and_score(EXAMPLE, [f"data.train={train_file}", f"data.test={test_file}", f"trainer.epochs={epochs}"])
    report({"accuracy_before": s["exact_match_before"], "accuracy_after": s["exact_match"],
            "in_set_before": s["in_set_before"], "in_set_after": s["in_set"], "test_loss": s["test_loss"],
            "test_perplexity": s["test_perplexity"], "train_conversations": n_train, "test_conversations": n_test,
            "epochs": epochs, "train_minutes": s["train_minutes"], "minutes": s["minutes"]})


def defaults(train: int = 96, test: int = 200) -> None:
    train_file, test_file, n_train, n_test = data(train, test)
    sources = [f"data.train={train_file}", f"data.test={test_file}"]
    tuned = tune_and_score(EXAMPLE, [*sources, "trainer.epochs=1"])
    print(f"tuned (the example's recipe): {tuned}")
    plain = tune_and_score(None, ["task=causal-lm", *sources, "model.backbone=smollm2"])
    print(f"defaults (task, data, model): {plain}")
    report({"tuned_exact_match": tuned["exact_match"], "tuned_in_set": tuned["in_set"],
            "defaults_exact_match": plain["exact_match"], "defaults_in_set": plain["in_set"],
            "exact_match_before": plain["exact_match_before"], "defaults_epochs": plain["epochs"],
            "tuned_train_minutes": tuned["train_minutes"], "defaults_train_minutes": plain["train_minutes"],
            "train_conversations": n_train, "test_conversations": n_test,
            "defaults_met": plain["exact_match"] >= tuned["exact_match"] - 0.05 and plain["in_set"] >= 0.95})


def steps(test: int = 200) -> None:
    figures = {}
    for train, epochs in ((96, 3), (96, 8), (48, 3), (48, 6)):
        train_file, test_file, _, _ = data(train, test)
        s = tune_and_score(None, ["task=causal-lm", f"data.train={train_file}", f"data.test={test_file}",
                                  "model.backbone=smollm2", f"trainer.epochs={epochs}"])
        figures[f"{train}x{epochs}"] = {"exact_match": s["exact_match"], "in_set": s["in_set"]}
        print(f"{train} questions, {epochs} epochs: {s}", flush=True)
    report(figures)


def full(test: int = 200) -> None:
    train_file, test_file, _, _ = data(96, test)
    figures = {}
    for lr in (5e-5, 2e-5):
        s = tune_and_score(None, ["task=causal-lm", f"data.train={train_file}", f"data.test={test_file}",
                                  "model.backbone=smollm2", "strategy.name=full", f"optim.lr={lr}"])
        figures[f"lr_{lr:g}"] = {"exact_match": s["exact_match"], "in_set": s["in_set"],
                                 "train_minutes": s["train_minutes"]}
        print(f"full fine-tune at {lr:g}: {s}", flush=True)
    report(figures)


if __name__ == "__main__":
    if sys.argv[1:2] == ["defaults"]:
        defaults(*(int(a) for a in sys.argv[2:4]))
    elif sys.argv[1:2] == ["steps"]:
        steps()
    elif sys.argv[1:2] == ["full"]:
        full()
    else:
        example(*(int(a) for a in sys.argv[1:4]))
