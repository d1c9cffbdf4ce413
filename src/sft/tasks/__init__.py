"""Tasks: what is being learned. A lazy registry maps a task name to "module:Class", imported on first use (as
torchtune's recipe registry and timm's model registry do), so adding a task is its package and one line here; other
packages can add theirs through the `sft.tasks` entry-point group, and tests through `register`.

`load_recipe` lives here because `task:` decides which recipe class validates the rest of the file.
"""

from __future__ import annotations

import difflib
import importlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path

from sft.core.rundir import run_of_recipe
from sft.errors import UserError
from sft.recipe import Recipe, read_raw, unknown_value, validate

DEFAULT = "image-classification"
_REGISTRY: dict[str, str] = {
    "image-classification": "sft.tasks.classification.task:ImageClassification",
    "text-classification": "sft.tasks.classification.task:TextClassification",
    "image-regression": "sft.tasks.regression.task:ImageRegression",
    "text-regression": "sft.tasks.regression.task:TextRegression",
    "image-multilabel": "sft.tasks.multilabel.task:ImageMultilabel",
    "text-multilabel": "sft.tasks.multilabel.task:TextMultilabel",
    "segmentation": "sft.tasks.segmentation.task:Segmentation",
    "detection": "sft.tasks.detection.task:Detection",
    "causal-lm": "sft.tasks.causal_lm.task:CausalLM",
}
# Commands on a recipe that only some tasks have: command name -> "module:object", a Tool whose module declares it
# alone (pydantic, no torch): the CLI lists them without importing their work.
_TOOLS: dict[str, str] = {
    "rank": "sft.tasks.classification.options:RANK",
}


@dataclass(frozen=True)
class Tool:
    """A tool's command: its one-line help, its options (a pydantic model: the CLI builds them) and `run`,
    "module:function" imported when it runs, called as run(recipe, options, console, errors); it refuses a recipe
    whose task does not have it, naming those that do."""
    help: str
    options: type
    run: str


def tools() -> dict[str, Tool]:
    """Every tool's declaration, by command name."""
    return {name: load(target) for name, target in _TOOLS.items()}


def load(target: str):
    """The object a "module:name" target names, its module imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def register(name: str, target: str) -> None:
    """Add (or replace) a task: `target` is "package.module:Class"; nothing is imported until it is used."""
    _REGISTRY[name] = target
    get_task.cache_clear()


def _targets() -> dict[str, str]:
    """name -> "module:Class": the built-in and registered tasks, then those installed packages declare."""
    found = dict(_REGISTRY)
    for entry in entry_points(group="sft.tasks"):
        found.setdefault(entry.name, entry.value)
    return found


def names() -> list[str]:
    return list(_targets())


@lru_cache(maxsize=None)
def get_task(name: str):
    """The task object of `name`, its module imported now."""
    targets = _targets()
    if name not in targets:
        close = difflib.get_close_matches(name, list(targets), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown task {name!r}{hint}; known: {', '.join(targets)}")
    return load(targets[name])()


def load_recipe(path: str | Path | None = None, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe (or the defaults), apply `dotted.key=value` overrides, and validate it with the recipe
    class of its `task:`. A run's own recipe (RUN/recipe.yaml) names RUN as its run_dir wherever the run folder now
    lies and whatever the current directory, unless an override says `run_dir=`."""
    raw, text = read_raw(path, overrides)
    name = raw.get("task", DEFAULT)
    if not isinstance(name, str) or name not in names():
        raise unknown_value(path, text, ["task"], name, names())
    recipe = validate(raw, get_task(name).recipe, path, text)
    own = run_of_recipe(path) if path is not None else None
    if own is not None and not any(item.partition("=")[0].strip() == "run_dir" for item in overrides):
        recipe.run_dir = str(own)
    return recipe


def task_of_run(run_dir: str | Path):
    """The task that wrote a run directory (its marker, else its recipe)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    marker = run / ".sft-run"
    name = None
    if marker.is_file():
        try:
            name = json.loads(marker.read_text()).get("task")
        except (OSError, ValueError, AttributeError):
            name = None
    if name is None:
        if not (run / "recipe.yaml").is_file():
            raise UserError(f"{run}: no finished model here (no recipe.yaml): give a run directory that `sft train` "
                            f"wrote")
        name = read_raw(run / "recipe.yaml")[0].get("task", DEFAULT)
    return get_task(name)
