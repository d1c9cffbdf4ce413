"""The one place a Lightning Trainer is built, for training and for the LR range test alike: the recipe's devices,
strategy, precision and clipping, and the value the task monitors."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, RichProgressBar

from sft.errors import UserError
from sft.recipe import Recipe


def quiet_lightning() -> None:
    """Lightning's advertising and hardware banners, and a deprecation inside Lightning itself, are noise for our
    users; silenced when a Trainer is built, never at import."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for message in (".*isinstance\\(treespec, LeafSpec\\).*", ".*smaller than the logging interval.*",
                    ".*module\\(s\\) in eval mode at the start of training.*",  # frozen on purpose
                    ".*(Checkpoint|Experiment logs) directory .* exists and is not empty.*",
                    # sft.data.loaders resumes the epoch's data itself: the data module's state holds Lightning's
                    # count of trained batches and the next loader skips them. Lightning 2.6 only saves and restores
                    # a loader that has state_dict/load_state_dict (the skipping would still be ours) and warns here
                    # for any other loader
                    ".*checkpoint that ended before the epoch ended and your dataloader is not resumable.*"):
        warnings.filterwarnings("ignore", message=message)


class ProgressBar(RichProgressBar):
    """Rich's bar, reading the logged values at most twice a second: it reads them after every batch, and on a GPU
    each read waits for the device (a host sync per step). Validation's values are read when it ends."""

    def __init__(self):
        super().__init__()
        self.read_at, self.shown = 0.0, {}

    def get_metrics(self, trainer, pl_module) -> dict:
        if time.monotonic() - self.read_at >= 0.5 or not trainer.training:
            self.read_at, self.shown = time.monotonic(), super().get_metrics(trainer, pl_module)
        return self.shown

    def on_validation_end(self, trainer, pl_module) -> None:
        self.read_at = 0.0  # the epoch's line shows the validation just finished
        super().on_validation_end(trainer, pl_module)


@dataclass(frozen=True)
class Monitor:
    """The validation value a task logs to pick the best checkpoint and stop early: an accuracy (max), a loss (min)."""
    name: str
    mode: str  # "max" | "min"


def optimizer_stepped(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the training batch `batch_idx` of the epoch (counted from the epoch's start, a resumed one too) ended
    with an optimizer step: every `accumulate_grad_batches`-th batch and the epoch's last, shorter group. Gradients
    accumulated between steps are in no checkpoint, so checkpoints and stops wait for a step."""
    done = batch_idx + 1
    return done % trainer.accumulate_grad_batches == 0 or done == trainer.num_training_batches


def build_trainer(recipe: Recipe, precision: str, callbacks: list[Callback], **settings) -> L.Trainer:
    """A Trainer with the recipe's settings; `settings` are the caller's own (epochs or steps, loggers, ...)."""
    quiet_lightning()
    t = recipe.trainer
    strategy = t.strategy
    if strategy == "ddp" and recipe.strategy.name != "full":
        strategy = "ddp_find_unused_parameters_true"  # frozen groups and cached epochs leave parameters unused
    if t.progress:
        callbacks = [*callbacks, ProgressBar()]
    try:
        return L.Trainer(
            accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=strategy,
            precision=precision, deterministic=t.deterministic, callbacks=callbacks,
            gradient_clip_val=recipe.optim.grad_clip,
            use_distributed_sampler=False, reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0,
            enable_progress_bar=t.progress, enable_model_summary=False, **settings)
    except (MisconfigurationException, ValueError, RuntimeError, ImportError) as e:
        raise UserError(f"trainer settings (accelerator={t.accelerator}, devices={t.devices}, strategy={t.strategy}, "
                        f"precision={t.precision}): {e}") from None
