from pathlib import Path

import pytest

from sft.errors import UserError
from sft import load_recipe
from sft.recipe import Recipe, documented_defaults
from sft.tasks.classification.recipe import ClassificationRecipe


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "data:\n  train: imgs\noptim:\n  lr: 0.01\n")
    recipe = load_recipe(path, ["optim.lr=0.05", "trainer.epochs=2", "strategy.name=full"])
    assert recipe.data.train.path == "imgs"
    assert recipe.optim.lr == 0.05 and recipe.trainer.epochs == 2 and recipe.strategy.name == "full"
    assert recipe.run_dir == "runs/r"


def test_unknown_key_says_line_and_did_you_mean(tmp_path):
    path = write(tmp_path, "data:\n  train: imgs\nstrategy:\n  nmae: full\n")
    with pytest.raises(UserError) as e:
        load_recipe(path)
    message = str(e.value)
    assert "strategy.nmae" in message and "line 4" in message and "did you mean 'name'" in message
    assert str(path) in message


def test_wrong_type_and_wrong_choice(tmp_path):
    path = write(tmp_path, "data:\n  train: imgs\ntrainer:\n  epochs: many\noptim:\n  name: lbfgs\n")
    with pytest.raises(UserError) as e:
        load_recipe(path)
    message = str(e.value)
    assert "trainer.epochs (line 4)" in message and "'many'" in message
    assert "optim.name (line 6)" in message and "'sgd'" in message


def test_bad_override_and_missing_train(tmp_path):
    with pytest.raises(UserError, match="dotted.key=value"):
        load_recipe(None, ["optim.lr"])
    with pytest.raises(UserError, match="data.train is required"):
        load_recipe(None)
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_documented_defaults_lists_every_section():
    text = documented_defaults(ClassificationRecipe, "text-classification")
    for key in ("task: text-classification", "data:", "  batch_size: 64", "strategy:", "optim:", "trainer:", "# ",
                "  label_smoothing: 0.0"):  # a key of the task's own
        assert key in text
    assert "label_smoothing" not in documented_defaults(Recipe, "toy")  # the shared sections alone


def test_example_recipes_are_valid():
    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert len(examples) >= 2
    for path in examples:
        recipe = load_recipe(path)
        assert recipe.data.train is not None and recipe.run_dir.startswith("runs/")


def test_group_by_length_is_on_for_texts_unless_balance_samples():
    text = ["task=text-classification", "data.train=t.csv"]
    assert load_recipe(None, text).data.group_by_length
    assert not load_recipe(None, ["data.train=imgs"]).data.group_by_length
    assert not load_recipe(None, [*text, "data.group_by_length=false"]).data.group_by_length
    assert not load_recipe(None, [*text, "data.balance=oversample"]).data.group_by_length
    assert load_recipe(None, [*text, "data.balance=class-weights"]).data.group_by_length
    with pytest.raises(UserError) as e:
        load_recipe(None, [*text, "data.balance=undersample", "data.group_by_length=true"])
    assert "data.group_by_length" in str(e.value) and "data.balance=undersample" in str(e.value)
