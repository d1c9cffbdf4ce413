"""The task registry: names, lazy lookup, `task:` in recipes, `sft recipe --task`."""

import pytest
from typer.testing import CliRunner

from sft import load_recipe
from sft.cli import app
from sft.errors import UserError
from sft.tasks import get_task, names, register, task_of_run
from sft.tasks.classification.recipe import TextClassificationRecipe


def test_registry_lists_the_tasks_and_builds_them_on_demand():
    assert {"image-classification", "text-classification"} <= set(names())
    task = get_task("text-classification")
    assert task.name == "text-classification" and task.recipe is TextClassificationRecipe
    assert task.monitor.name == "val_acc" and task.monitor.mode == "max"
    with pytest.raises(UserError, match="did you mean 'image-classification'"):
        get_task("image-clasification")


def test_unknown_task_in_a_recipe_names_its_line_and_a_close_match(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  train: imgs\ntask: text-clasification\n")
    with pytest.raises(UserError) as e:
        load_recipe(path)
    message = str(e.value)
    assert str(path) in message and "task (line 3)" in message and "did you mean 'text-classification'" in message


def test_a_task_keys_are_known_to_its_recipe_only(tmp_path):
    register("plain", "sft.tasks.base:TaskBase")  # the shared sections alone
    with pytest.raises(UserError, match="data.label_column.*unknown key"):  # classification's key, not plain's
        load_recipe(None, ["task=plain", "data.train=x", "data.label_column=y"])
    assert load_recipe(None, ["task=text-classification", "data.train=x", "data.label_column=y"])


def test_sft_recipe_prints_a_task_sections():
    text = CliRunner().invoke(app, ["recipe", "--task", "text-classification"]).output
    assert "task: text-classification" in text and "text_column:" in text and "max_length:" in text
    assert "image-classification" in text  # the list of tasks
    result = CliRunner().invoke(app, ["recipe", "--task", "segmentaton"])
    assert result.exit_code == 2 and "unknown task" in result.output


def test_a_folder_that_is_no_run_is_named(tmp_path):
    with pytest.raises(UserError, match="no finished model"):
        task_of_run(tmp_path)
