import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from sft import load_recipe
from sft.errors import UserError
from sft.recipe import VisionRecipe, documented_defaults
from sft.tasks.classification.recipe import TextClassificationRecipe
from tests.conftest import sft


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
    text = documented_defaults(TextClassificationRecipe, "text-classification")
    for key in ("task: text-classification", "data:", "  batch_size: 64", "strategy:", "optim:", "trainer:", "# ",
                "  label_smoothing: 0.0"):  # a key of the task's own
        assert key in text
    assert "label_smoothing" not in documented_defaults(VisionRecipe, "toy")  # the shared sections alone


def test_example_recipes_are_valid():
    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert len(examples) >= 2
    for path in examples:
        recipe = load_recipe(path)
        assert recipe.data.train is not None and recipe.run_dir.startswith("runs/")


def test_group_by_length_is_on_for_texts_unless_balance_samples():
    text = ["task=text-classification", "data.train=t.csv"]
    assert load_recipe(None, text).data.group_by_length
    assert "group_by_length" not in type(load_recipe(None, ["data.train=imgs"]).data).model_fields  # texts only
    assert not load_recipe(None, [*text, "data.group_by_length=false"]).data.group_by_length
    assert not load_recipe(None, [*text, "data.balance=oversample"]).data.group_by_length
    assert load_recipe(None, [*text, "data.balance=class-weights"]).data.group_by_length
    with pytest.raises(UserError) as e:
        load_recipe(None, [*text, "data.balance=undersample", "data.group_by_length=true"])
    assert "data.group_by_length" in str(e.value) and "data.balance=undersample" in str(e.value)


# -- each task's recipe holds what that task reads -------------------------------------------------------------------

TASKS = ["image-classification", "text-classification", "image-regression", "text-regression", "image-multilabel",
         "text-multilabel", "segmentation", "detection", "causal-lm"]
SRC = Path(__file__).resolve().parents[1] / "src" / "sft"


def leaf_keys(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """dotted key -> field, for every leaf of a recipe class (a split's source is one leaf with its keys)."""
    keys = {}
    for name, field in model.model_fields.items():
        nested = next((a for a in getattr(field.annotation, "__args__", (field.annotation,))
                       if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is not None:
            keys.update(leaf_keys(nested, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = field
    return keys


def strategies(task) -> list[str]:
    return list(typing.get_args(task.recipe.model_fields["strategy"].annotation.model_fields["name"].annotation))


@pytest.mark.parametrize("name", TASKS)
def test_a_task_s_recipe_holds_only_the_keys_of_what_it_supports(name):
    from sft.tasks import get_task
    from sft.tasks.base import TaskBase
    task = get_task(name)
    keys, offered = leaf_keys(task.recipe), strategies(task)
    has = lambda *names: all(any(k.endswith("." + n) for k in keys) for n in names)  # noqa: E731
    assert has("lora_rank", "lora_alpha", "lora_dropout", "lora_targets") == ("lora" in offered)
    assert has("head_epochs") == ("two-stage" in offered)
    assert has("cache", "head_init") == task.uses_feature_cache(task.recipe())
    assert ("auto" in offered) == (type(task).choose_strategy is not TaskBase.choose_strategy)
    vision = name in ("image-classification", "image-regression", "image-multilabel", "segmentation", "detection")
    assert has("image_size") == has("augment") == has("channels_last") == vision
    assert has("classes") == (name not in ("causal-lm", "image-regression", "text-regression"))  # numbers: columns


@pytest.mark.parametrize("name", TASKS)
def test_every_key_of_a_task_s_recipe_is_read_by_its_package_or_the_shared_layers(name):
    """A key nothing reads is a key the user sets in vain: each leaf is read as `.key` (or handed on by name) in
    the task's own package or in the layers every task shares."""
    from sft.tasks import get_task, _targets
    package = SRC / "tasks" / _targets()[name].split(":")[0].split(".")[2]
    shared = [p for p in SRC.rglob("*.py") if "tasks" not in p.relative_to(SRC).parts[:1]] + sorted(
        (SRC / "tasks").glob("*.py"))  # base.py, pooled.py, ...: the modules every task may use
    code = "\n".join(p.read_text() for p in [*package.rglob("*.py"), *shared])
    unread = [key for key in leaf_keys(get_task(name).recipe)
              if not re.search(rf"\.{key.rsplit('.', 1)[-1]}\b|\"{key.rsplit('.', 1)[-1]}\"", code)]
    assert unread == []


@pytest.mark.parametrize("name, key, value", [("segmentation", "strategy.name", "lora"),
                                              ("detection", "strategy.name", "auto"),
                                              ("causal-lm", "strategy.name", "two-stage"),
                                              ("image-classification", "strategy.name", "lora"),
                                              ("causal-lm", "data.image_size", "224"),
                                              ("segmentation", "strategy.head_init", "probe")])
def test_a_setting_the_task_does_not_have_is_a_recipe_error_with_its_line(tmp_path, name, key, value):
    section, leaf = key.split(".")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {name}\ndata:\n  train: x\n{section}:\n  {leaf}: {value}\n" if section != "data" else
                      f"task: {name}\ndata:\n  train: x\n  {leaf}: {value}\n")
    with pytest.raises(UserError) as e:
        load_recipe(recipe)
    assert key in str(e.value) and "(line " in str(e.value)


def test_recipe_of_causal_lm_and_segmentation_list_none_of_the_others_keys():
    assert sft("recipe", "--task", "causal-lm").exit_code == 0
    lm = sft("recipe", "--task", "causal-lm").output
    for key in ("image_size", "augment", "palette", "head_init", "cache:", "head_epochs", "channels_last", "classes"):
        assert f" {key}" not in lm, key
    seg = sft("recipe", "--task", "segmentation").output
    for key in ("lora_", "head_init", "cache:", "text_column", "pooling", "label_smoothing"):
        assert f" {key}" not in seg, key


@pytest.mark.parametrize("name", TASKS)
def test_every_key_s_help_is_one_short_line(name):
    from sft.tasks import get_task
    long = {k: len(f.description or "") for k, f in leaf_keys(get_task(name).recipe).items()
            if not f.description or len(f.description) > 120 or "\n" in f.description}
    assert long == {}


def test_the_shared_layers_name_no_task():
    """core, models, data and training serve every task: no classifier's words there (issue 27's check)."""
    words = re.compile(r"val_acc|cross_entropy|CrossEntropy|num_classes|\bTEXT\b|ImageModel")
    found = [f"{p.relative_to(SRC)}:{n}" for layer in ("core", "models", "data", "training")
             for p in sorted((SRC / layer).rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if words.search(line)]
    assert found == []
