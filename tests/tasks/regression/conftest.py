"""The regression tests' text data and run: fortunes quotes in JSONL with two targets (words and letters / 10)."""

import csv
import json
from pathlib import Path

import pytest

from sft import fine_tune, load_recipe


@pytest.fixture(scope="session")
def quote_lengths(fortunes_slice, tmp_path_factory) -> dict[str, Path]:
    out, paths = tmp_path_factory.mktemp("quote-lengths"), {}
    for split in ("train", "test"):
        with open(fortunes_slice[split], newline="") as f:
            quotes = [row["text"] for row in csv.DictReader(f)]
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps({"text": q, "words": len(q.split()), "letters": len(q) / 10}) + "\n"
                                        for q in quotes))
    return paths


@pytest.fixture(scope="session")
def tiny_text_regression_run(tmp_path_factory, quote_lengths, tiny_bert) -> Path:
    """The tiny BERT, fully fine-tuned for 2 epochs to predict a quote's words and letters."""
    tmp = tmp_path_factory.mktemp("text-regression")
    fine_tune(load_recipe(None, [
        "task=text-regression", f"data.train={quote_lengths['train']}", f"data.test={quote_lengths['test']}",
        "data.target_columns=[words, letters]", "data.val_fraction=0.25", "data.batch_size=16", "data.max_length=48",
        f"model.backbone={tiny_bert}", "strategy.name=full", "optim.lr=0.003", "trainer.epochs=2",
        "trainer.precision=32-true", "trainer.progress=false", f"run_dir={tmp / 'run'}", f"cache_dir={tmp / 'cache'}"]))
    return tmp / "run"
