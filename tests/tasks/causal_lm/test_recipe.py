"""The causal-LM recipe: `task:` picks the class (no field of its own), a bad model.weights is a recipe error."""

import pytest

from sft.errors import UserError
from sft.tasks import load_recipe


def test_task_and_weights(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("task: causal-lm\ndata:\n  train: t.jsonl\nmodel:\n  weights: pretrained\n")
    recipe = load_recipe(path)
    assert recipe.task == "causal-lm" and recipe.model.weights == "pretrained"
    path.write_text("task: causal-lm\ndata:\n  train: t.jsonl\nmodel:\n  weights: ./my-model\n")
    with pytest.raises(UserError, match=r"model.weights \(line 5\): expected 'pretrained' or 'none'"):
        load_recipe(path)
