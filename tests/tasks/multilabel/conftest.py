"""The multi-label tests' text data and run: fortunes quotes with two 0/1 label columns (`topics`) and a trained tiny
text-multilabel run on them (`tiny_text_multilabel_run`). The image data and run (`mosaics`, `tiny_multilabel_run`)
live in tests/conftest.py, shared with tests/serve/test_multilabel.py."""

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import sft


def topic_rows(fortunes_csv: Path) -> list[dict]:
    """The quotes of a fortunes slice with two 0/1 label columns: long (over 12 words) and `the` (has the word)."""
    with open(fortunes_csv, newline="") as f:
        quotes = [row["text"] for row in csv.DictReader(f)]
    return [{"text": q, "long": int(len(q.split()) > 12), "the": int(" the " in f" {q.lower()} ")} for q in quotes]


@pytest.fixture(scope="session")
def topics(fortunes_slice, tmp_path_factory) -> dict[str, Path]:
    """`topic_rows` of the fortunes slice as train.jsonl and test.jsonl."""
    out, folder = {}, tmp_path_factory.mktemp("topics")
    for split in ("train", "test"):
        out[split] = folder / f"{split}.jsonl"
        out[split].write_text("".join(json.dumps(r) + "\n" for r in topic_rows(fortunes_slice[split])))
    return out


def topics_recipe(folder: Path, train, test, bert: Path) -> Path:
    """A text-multilabel recipe over the topics' label columns with the tiny BERT (a 1-epoch linear probe), its run
    and cache in `folder`."""
    recipe = folder / "r.yaml"
    recipe.write_text(f"task: text-multilabel\ndata:\n  train: {train}\n  test: {test}\n"
                      f"  label_columns: [long, the]\n  allow_empty: true\n  val_fraction: 0.25\n  batch_size: 16\n"
                      f"  max_length: 48\nmodel:\n  backbone: {bert}\nstrategy:\n  name: linear-probe\n"
                      f"optim:\n  pos_weight: auto\ntrainer:\n  epochs: 1\n  precision: 32-true\n  progress: false\n"
                      f"run_dir: {folder / 'run'}\ncache_dir: {folder / 'cache'}\n")
    return recipe


@pytest.fixture(scope="session")
def tiny_text_multilabel_run(topics, tiny_bert, tmp_path_factory) -> Path:
    """One trained tiny text-multilabel run (`sft train` of `topics_recipe`); tests write only under RUN/eval*,
    RUN/export* or in copies."""
    tmp = tmp_path_factory.mktemp("text-multilabel")
    result = sft("train", topics_recipe(tmp, topics["train"], topics["test"], tiny_bert))
    assert result.exit_code == 0, result.output
    return tmp / "run"
