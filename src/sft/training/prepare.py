"""Everything a run trains, built from the recipe alone (no run directory, no trainer): what training, the LR range
test and a task's tools share. The task supplies each part through the `TrainingTask` interface below."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

import lightning as L
import torch
from torch.utils.data import Dataset

from sft.core.hardware import loader_workers, local_processes, training_device
from sft.core.precision import resolve_precision, use_channels_last
from sft.core.rundir import RunDir
from sft.data.loaders import Inputs, RunData
from sft.data.splits import Splits
from sft.models.backbone import Backbone
from sft.recipe import Recipe
from sft.training.features import cache_key, cached_features, weights_digest
from sft.training.module import FineTuneModule
from sft.training.optim import auto_epochs, auto_lr
from sft.training.strategies import Schedule
from sft.training.trainer import Monitor

log = logging.getLogger("sft")


class TrainingTask(Protocol):
    """What the training path asks of a task (sft.tasks.base.Task adds evaluation, prediction and loading)."""

    name: str
    monitor: Monitor

    def load_splits(self, recipe: Recipe) -> Splits: ...

    def resolve_auto(self, recipe: Recipe, splits: Splits, device: torch.device, notes: dict) -> Recipe:
        """The recipe with the task's `auto` settings that depend on the data and the machine decided (and said in
        `notes`, which metrics.json holds)."""

    def build_backbone(self, recipe: Recipe) -> Backbone: ...

    def build_inputs(self, backbone: Backbone, recipe: Recipe | None) -> Inputs: ...

    def uses_feature_cache(self, recipe: Recipe) -> bool: ...

    def loader_options(self, recipe: Recipe, splits: Splits, inputs: Inputs, notes: dict) -> dict: ...

    def choose_strategy(self, recipe: Recipe, splits: Splits, train_features: torch.Tensor, notes: dict) -> Recipe: ...

    def build_module(self, recipe: Recipe, backbone: Backbone, splits: Splits, schedule: Schedule,
                     channels_last: bool) -> FineTuneModule: ...

    def start_head(self, recipe: Recipe, model: FineTuneModule, splits: Splits,
                   features: Callable[[str], torch.Tensor]) -> dict | None:
        """Called when the first epochs are head-only on cached features (`features(split)`): the task may set the
        head's starting weights (classification fits a converged linear probe); returns facts for metrics.json."""

    def write_model(self, run: RunDir, prepared: "Prepared") -> None: ...

    def final_metrics(self, prepared: "Prepared", cached: bool) -> dict: ...


@dataclass
class Prepared:
    recipe: Recipe
    backbone: Backbone
    splits: Splits
    inputs: Inputs
    schedule: Schedule
    precision: str
    channels_last: bool
    model: FineTuneModule
    data: RunData
    notes: dict = field(default_factory=dict)  # facts for the run log and metrics.json (e.g. truncated texts)


def prepare(task: TrainingTask, recipe: Recipe) -> Prepared:
    """Seed, read the data (first: a bad file is found before a slow model load), decide the `auto` keys that depend
    on it and the machine, build the backbone, its inputs, the freeze schedule, the model and the loaders."""
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    splits = task.load_splits(recipe)
    device = training_device(recipe.trainer.accelerator)
    notes: dict = {}
    recipe = task.resolve_auto(recipe, splits, device, notes)
    if recipe.trainer.epochs == "auto":
        t = recipe.trainer
        per_step = recipe.data.batch_size * recipe.optim.accumulate * local_processes(t.devices, device) * t.num_nodes
        epochs, why = auto_epochs(len(splits.train), per_step)
        recipe = recipe.model_copy(update={"trainer": t.model_copy(update={"epochs": epochs})})
        notes["epochs_auto"] = {"epochs": epochs, "for": why}
        log.warning(f"trainer.epochs auto: {epochs}, for {why}")
    backbone = task.build_backbone(recipe)
    inputs = task.build_inputs(backbone, recipe)
    options = task.loader_options(recipe, splits, inputs, notes)
    precision = resolve_precision(recipe.trainer.precision, recipe.trainer.accelerator)
    # image tasks' recipes say whether convnets run channels-last; the other tasks' inputs have no channels
    channels_last = use_channels_last(getattr(recipe.trainer, "channels_last", False), backbone.module)
    workers = loader_workers(recipe.data.num_workers, device, local_processes(recipe.trainer.devices, device),
                             inputs.decodes)
    notes["num_workers"] = workers
    features = split_features(recipe, backbone.name, backbone.module, splits, inputs, precision, channels_last,
                              device, workers)
    if recipe.strategy.name == "auto":
        recipe = task.choose_strategy(recipe, splits, features("train", inputs.eval(splits.train)), notes)
    if recipe.optim.lr == "auto":
        lr, kind = auto_lr(recipe.strategy.name, recipe.optim.name, backbone.module)
        recipe = recipe.model_copy(update={"optim": recipe.optim.model_copy(update={"lr": lr})})
        notes["lr_auto"] = {"lr": lr, "for": kind}
    schedule = Schedule(recipe.strategy, backbone.groups)
    model = task.build_module(recipe, backbone, splits, schedule, channels_last)
    cache = task.uses_feature_cache(recipe) and recipe.strategy.cache != "none"
    if cache and schedule.head_only(0):
        def of_split(split: str) -> torch.Tensor:
            return features(split, inputs.eval(getattr(splits, split)))
        notes.update(task.start_head(recipe, model, splits, of_split) or {})
    head_only = (lambda epoch: schedule.head_only(epoch)) if cache else (lambda epoch: False)
    data = RunData(splits, inputs, batch_size=recipe.data.batch_size, num_workers=workers, seed=recipe.seed,
                   head_only=head_only, features=features, pin_memory=device.type == "cuda", **options)
    return Prepared(recipe, backbone, splits, inputs, schedule, precision, channels_last, model, data, notes)


def split_features(recipe: Recipe, name: str, backbone: torch.nn.Module, splits, inputs: Inputs, precision: str,
                   channels_last: bool, device: torch.device, workers: int) -> Callable[[str, Dataset], torch.Tensor]:
    """features(split, dataset): the frozen backbone's features of a split, through the cache, computed on the
    training device. The key holds the weights' content, the transform or tokenizer, the data's fingerprint and the
    precision, so any change recomputes them."""
    weights = weights_digest(backbone)
    loaded: dict[str, torch.Tensor] = {}  # head-only epochs ask every epoch: hash and read each split once per run

    def features(split: str, dataset: Dataset) -> torch.Tensor:
        if split not in loaded:
            key = cache_key(name, weights, inputs.key, getattr(splits, split).fingerprint(), precision)
            loaded[split] = cached_features(
                key, backbone, dataset, mode=recipe.strategy.cache, cache_dir=recipe.cache_dir,
                batch_size=max(recipe.data.batch_size, 128), precision=precision,
                channels_last=channels_last, device=device, num_workers=workers, collate_fn=inputs.collate)
        return loaded[split]
    return features
