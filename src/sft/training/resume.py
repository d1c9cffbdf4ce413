"""What `--resume` accepts: the recipe the run was started with, give or take settings that do not change what is
being trained, and a checkpoint that fits the model this recipe builds.

A changed class list, backbone, weights, task, image size, strategy or optimizer would continue some other run from
this one's weights (or fail deep in PyTorch with a state-dict traceback), so each is refused with the old and the
new value. Settings that only say how long or how visibly to train are taken from the new recipe and named in a
warning. The checkpoint is read with `weights_only=True` whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says: a planted
file runs no code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml
from torch import nn

from sft.core.rundir import run_of_recipe
from sft.core.torchfile import load_torch_file
from sft.errors import UserError
from sft.recipe import Recipe

log = logging.getLogger("sft")

# keys a resumed run takes from the new recipe: how long, where and how visibly it trains, not what it learns
FREE = ("trainer.epochs", "trainer.early_stopping", "trainer.progress", "trainer.log_every_n_steps",
        "trainer.checkpoint_minutes", "trainer.checkpoint_steps", "trainer.accelerator", "trainer.devices",
        "trainer.num_nodes", "trainer.strategy", "trainer.deterministic", "trainer.loggers", "trainer.experiment",
        "trainer.mlflow_uri", "data.num_workers", "strategy.cache", "run_dir", "cache_dir")
# recorded as what they resolved to, which a resumed run keeps (on another machine too)
RESOLVED = {"optim.lr": ("auto", "find"), "strategy.name": ("auto",), "trainer.epochs": ("auto",),
            "data.image_size": ("auto",), "data.augment": ("auto",), "model.decoder_channels": ("auto",),
            "model.fpn_channels": ("auto",)}


def resumed_recipe(recipe: Recipe, saved: Path) -> Recipe:
    """The recipe to continue the run with: the saved one (what `find` and `auto` resolved to) with the new
    recipe's free keys. Any other difference is a UserError listing each key with its old and new value."""
    try:
        old = yaml.safe_load(saved.read_text())
        if isinstance(old, dict) and old.get("task", recipe.task) != recipe.task:  # another recipe class altogether
            raise UserError(f"{saved.parent}: --resume continues the run with the recipe it was started with, and "
                            f"these settings changed:\n  task: {old.get('task')!r} -> {recipe.task!r}\nRestore them "
                            f"to resume, or train the new recipe into another run_dir.")
        done = type(recipe).model_validate(old)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or foreign recipe.yaml: say which file
        raise UserError(f"{saved}: cannot read the run's recipe ({str(e).splitlines()[0]}); it cannot be resumed: "
                        f"train into a new run_dir") from None
    before, after = flat_keys(done.model_dump(mode="json")), flat_keys(recipe.model_dump(mode="json"))
    refused, kept = [], []
    for key in sorted(before.keys() & after.keys()):
        a, b = before[key], after[key]
        if _same(key, a, b) or b in RESOLVED.get(key, ()):
            continue
        (kept if key in FREE else refused).append(f"{key}: {a!r} -> {b!r}")
    if refused:
        raise UserError(f"{saved.parent}: --resume continues the run with the recipe it was started with, and these "
                        f"settings changed:\n  " + "\n  ".join(refused) + "\nRestore them to resume, or train the "
                        "new recipe into another run_dir (or replace this run with --overwrite).")
    if kept:
        note = " (the learning-rate schedule is stretched to the new length)" if any(
            k.startswith("trainer.epochs") for k in kept) else ""
        log.warning("resuming with these settings changed: " + "; ".join(kept) + note)
    strategy = done.strategy
    if "cache" in type(strategy).model_fields:  # where the features are cached is the new recipe's to say
        strategy = strategy.model_copy(update={"cache": recipe.strategy.cache})
    recipe = recipe.model_copy(update={"optim": done.optim, "strategy": strategy})
    for key, tokens in RESOLVED.items():
        if after.get(key) in tokens and key in before:
            recipe = _with_key(recipe, key, before[key])
    return recipe


def _with_key(section, key: str, value):
    """A copy of the section with its dotted key set."""
    head, _, rest = key.partition(".")
    return section.model_copy(update={head: _with_key(getattr(section, head), rest, value) if rest else value})


def check_own_run(recipe_file: str | Path, recipe: Recipe, resume: bool) -> None:
    """`--resume` with a run's own recipe (RUN/recipe.yaml) continues RUN: a run_dir naming another folder is
    refused rather than guessed at."""
    own = run_of_recipe(recipe_file)
    if resume and own is not None and Path(recipe.run_dir).resolve() != own.resolve():
        raise UserError(f"{recipe_file} is the recipe of the run in {own}, and run_dir={recipe.run_dir} names another "
                        f"folder: --resume continues the run the recipe belongs to. Leave out run_dir= to resume "
                        f"{own}, or resume {recipe.run_dir} with its own recipe.yaml")


def load_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint read weights-only (tensors and plain containers, never arbitrary objects), its tensors
    memory-mapped: checking names and shapes reads none of them, and Lightning reads the file for the resume."""
    return load_torch_file(path, "it cannot be resumed: train into a new run_dir, or replace this run with --overwrite",
                           mmap=True)


def check_checkpoint(path: Path, model: nn.Module, facts: dict) -> None:
    """The checkpoint fits `model`: the same task facts (e.g. class names, which may come from the data rather than
    the recipe) and the same tensor names and shapes. Otherwise a UserError saying what differs."""
    ckpt = load_checkpoint(path)
    saved_facts = ckpt.get("sft", {}) if isinstance(ckpt, dict) else {}
    for key, value in facts.items():
        if key in saved_facts and saved_facts[key] != value:
            raise UserError(f"{path}: the run was trained with {key} {saved_facts[key]}, resuming it now would "
                            f"use {value}; resume with the same data and model files, or train into a new run_dir")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a Lightning checkpoint of sft (no state_dict); it cannot be resumed")
    own = model.state_dict()
    missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(own.keys() & state.keys())
              if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        what = "; ".join(filter(None, (
            f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing else "",
            f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
            f"{len(shapes)} of another shape (e.g. {shapes[0]}, checkpoint vs model)" if shapes else "")))
        raise UserError(f"{path}: the checkpoint does not fit the model this recipe builds: {what}; resume with the "
                        f"recipe the run was started with, or train into a new run_dir")


def flat_keys(tree: dict, prefix: str = "") -> dict:
    """A nested mapping as one level of dotted keys."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(key: str, a, b) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and (key.endswith((".path", ".labels", "exclude", "relabel"))
                                                      or key == "model.backbone"):
        return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
    return False
