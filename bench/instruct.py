"""Instruction tuning of the shipped SmolLM2-135M-Instruct on the fortunes topics (examples/instruct/build.py: "Which
topic is this quote from? Answer with one word from: ..."), LoRA as examples/instruct/fortunes.yaml says: exact-match
accuracy and the share of answers inside the 10 topics, before and after, on a seeded subset of the test split.

The subsets are the first N of the builder's seeded order (quotes of at most 300 characters), so every run sees the
same conversations.

    .venv/bin/python bench/instruct.py [train] [test] [epochs]     # default 256 200 1
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
sys.path.insert(0, str(ROOT / "examples" / "instruct"))
from build import fortunes  # noqa: E402


def subset(source: Path, target: Path, n: int) -> int:
    rows = source.read_text(encoding="utf-8").splitlines()[:n]
    target.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return len(rows)


def main(train: int = 256, test: int = 200, epochs: int = 1) -> None:
    data = OUT / "instruct"
    fortunes(data)
    n_train = subset(data / "train.jsonl", data / f"train-{train}.jsonl", train)
    n_test = subset(data / "test.jsonl", data / f"test-{test}.jsonl", test)
    task = get_task("causal-lm")
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(ROOT / "examples" / "instruct" / "fortunes.yaml", [
            f"data.train={data / f'train-{train}.jsonl'}", f"data.test={data / f'test-{test}.jsonl'}",
            f"trainer.epochs={epochs}", "trainer.progress=false", f"run_dir={tmp}/run"])
        started = time.perf_counter()
        run = fine_tune(task, recipe)
        trained = time.perf_counter()
        _, summary = task.evaluate(run.dir, None, None, task.options["eval"](top_losses=8), overwrite=False,
                                   batch_size=16, progress=False)
        done = time.perf_counter()
    report({"accuracy_before": summary.get("exact_match_before"), "accuracy_after": summary["exact_match"],
            "in_set_before": summary.get("in_label_set_before"), "in_set_after": summary["in_label_set"],
            "test_loss": summary["loss"], "test_perplexity": summary["perplexity"],
            "train_conversations": n_train, "test_conversations": n_test, "epochs": epochs,
            "train_minutes": round((trained - started) / 60, 2), "minutes": round((done - started) / 60, 2)})


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
