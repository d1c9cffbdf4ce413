"""`sft compare`: metrics side by side and only the recipe keys that differ."""

import json
import re

import yaml
from typer.testing import CliRunner

from sft.cli import app
from sft.tasks.compare import compare_runs, flatten


def fake_run(path, lr, acc, strategy="full", evaluated=None):
    path.mkdir(parents=True)
    recipe = {"data": {"train": "/d/train.npz", "batch_size": 32}, "optim": {"lr": lr, "name": "adamw"},
              "strategy": {"name": strategy}, "run_dir": str(path)}
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (path / "metrics.json").write_text(json.dumps({"test_acc": acc, "test_recall": {"a": 1.0}, "epochs": 2}))
    if evaluated is not None:
        (path / "eval").mkdir()
        (path / "eval" / "metrics.json").write_text(json.dumps({"ece": evaluated, "per_class": {"a": {}}}))
    return path


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_compare_lists_metrics_and_only_differing_recipe_keys(tmp_path):
    a = fake_run(tmp_path / "a", 0.01, 0.91, evaluated=0.05)
    b = fake_run(tmp_path / "b", 0.003, 0.93, strategy="two-stage")
    header, rows = compare_runs([a, b])
    assert header == ["", "a", "b"]
    table = {row[0]: row[1:] for row in rows}
    assert table["test_acc"] == ["0.91", "0.93"] and table["epochs"] == ["2", "2"]
    assert table["eval.ece"] == ["0.05", "—"]  # only a was evaluated
    assert "test_recall" not in table and "eval.per_class" not in table  # per-class dicts stay in the runs
    recipe_rows = sorted(k for k in table if k.startswith("recipe."))
    assert recipe_rows == ["recipe.optim.lr", "recipe.strategy.name"]  # run_dir and equal keys are left out
    assert table["recipe.strategy.name"] == ["full", "two-stage"]


def test_compare_cli_prints_and_writes_html(tmp_path):
    a = fake_run(tmp_path / "x" / "run", 0.01, 0.5)
    b = fake_run(tmp_path / "y" / "run", 0.02, 0.6, strategy="<b>odd</b>")
    out = tmp_path / "compare.html"
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "recipe.optim.lr" in result.output and "test_acc" in result.output
    page = out.read_text()
    assert str(tmp_path / "x" / "run") in page  # same folder names: columns are the full paths
    assert "&lt;b&gt;odd&lt;/b&gt;" in page and "<b>odd" not in page
    assert len(re.findall("<tr>", page)) == 1 + 2 + 2  # header, test_acc and epochs, two recipe keys


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path):
    a = fake_run(tmp_path / "a", 0.01, 0.5)
    result = CliRunner().invoke(app, ["compare", str(a), str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output
