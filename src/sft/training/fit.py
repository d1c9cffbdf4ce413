"""Training: a recipe and its task in, a finished run directory out, with Lightning's Trainer doing all the training.

Reads top to bottom: check the run directory and lock it, resolve what the interrupted run resolved (on resume) or
find the learning rate, prepare, build the Trainer, fit, write the best model's files, score it. Lightning gives precision,
devices/DDP, checkpoints, loggers and progress bars; this module only wires them to the task's parts.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sft.core.atomic import atomic_write_text
from sft.core.calibration import set_temperature, stored_temperature
from sft.core.rundir import RunDir, is_child_process, locked
from sft.errors import Interrupted, UserError
from sft.recipe import Recipe, dump_recipe
from sft.training.ema import EMA, BestCheckpoint
from sft.training.interrupt import StopOnSignal, die_with_launcher
from sft.training.lr_find import find_lr, write_lr_find
from sft.training.module import NonFiniteLoss
from sft.training.prepare import TrainingTask, prepare
from sft.training.resume import check_checkpoint, resumed_recipe
from sft.training.trackers import close_trackers, local_loggers, open_trackers
from sft.training.trainer import Monitor, build_trainer, optimizer_stepped

log = logging.getLogger("sft")


@dataclass
class Run:
    """A finished run: its directory and its metrics."""
    dir: Path
    metrics: dict
    finished_before: bool = False  # resumed after it had finished: nothing was trained


def fine_tune(task: TrainingTask, recipe: Recipe, *, overwrite: bool = False, resume: bool = False,
              callbacks: list[Callback] = (), keep: tuple = ()) -> Run:
    """Train as the recipe says; write and return the run directory (checkpoints, logs, model, metrics). `keep`:
    paths (the data) that replacing a run directory must never remove."""
    run = RunDir(recipe.run_dir)
    child = is_child_process()
    stop = StopOnSignal(run)
    if child:
        die_with_launcher()
    with contextlib.nullcontext() if child else locked(run):
        if not child:
            run.check(overwrite=overwrite, resume=resume, keep=keep)
        try:
            with stop.installed():
                return _fine_tune(task, recipe, run, overwrite, resume, [*callbacks, stop], keep)
        except SIGTERMException:  # Lightning's own SIGTERM check, at an epoch's end (last.ckpt written)
            raise Interrupted(stop.message(signal.SIGTERM, saved=False), signal.SIGTERM) from None
        except RuntimeError:  # a DDP collective lost its peer: say which process was killed, if one was
            if (ended := stop.ended_process()) is None:
                raise
            raise ended from None
        finally:
            if not child:
                run.discard_if_empty()  # a run that failed before its first checkpoint: a rerun starts afresh


def _fine_tune(task, recipe: Recipe, run: RunDir, overwrite: bool, resume: bool, callbacks: list, keep) -> Run:
    lr_found = None
    if resume and run.recipe.exists():  # the interrupted run's recipe: what it resolved (a found LR, auto strategy)
        recipe = resumed_recipe(recipe, run.recipe)
    if recipe.optim.lr == "find":
        lr_found = find_lr(task, recipe)
        log.warning(f"optim.lr find: {lr_found['suggestion']:.3g} (LR range test)")
        recipe = recipe.model_copy(update={"optim": recipe.optim.model_copy(update={"lr": lr_found["suggestion"]})})
    p = prepare(task, recipe)
    recipe = p.recipe  # resolved: strategy auto -> the chosen one
    if resume:  # the same classes and tensors, before Lightning meets the file
        check_checkpoint(run.last_checkpoint, p.model, p.model.checkpoint_facts())
        if (done := _epochs_finished(run)) is not None and done >= recipe.trainer.epochs:
            return _rebuild(task, run, p, done)
    trainer = _trainer(recipe, run, p.precision, task.monitor, callbacks)  # before the folder: bad settings leave none
    if not is_child_process():
        run.start(overwrite=overwrite, resume=resume, task=task.name, keep=keep)
        atomic_write_text(run.recipe, dump_recipe(recipe))
        if lr_found is not None:
            write_lr_find(run.path / "lr-find", lr_found)
            p.notes["lr_find"] = {k: lr_found[k] for k in ("suggestion", "valley", "steep", "steps_done", "seconds")}
    # after the folder: a local MLflow store lives in it; rank 0 starts (or continues) the tracker runs
    trackers = open_trackers(recipe, run.path, resume, rank_zero=not is_child_process())
    trainer.loggers = [*trainer.loggers, *trackers]
    for warning in p.notes.pop("warnings", []):
        log.warning(warning)

    first = FirstEpoch()
    trainer.callbacks.append(first)
    started = time.perf_counter()
    try:
        trainer.fit(p.model, datamodule=p.data, ckpt_path=str(run.last_checkpoint) if resume else None,
                    weights_only=True)  # explicit: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot override it
    except NonFiniteLoss as e:
        kept = f"; the last good checkpoint is {run.last_checkpoint}" if run.last_checkpoint.exists() else ""
        raise UserError(f"training stopped: {e}{kept}. Lower optim.lr or set optim.grad_clip.") from None
    seconds = time.perf_counter() - started
    if trainer.global_rank != 0:
        return Run(run.path, {})
    if trainer.interrupted or not run.best_checkpoint.exists():
        close_trackers(trackers, run.path, None)  # --resume continues their runs
        return Run(run.path, {"interrupted": True, "epochs_done": trainer.current_epoch})

    best = _export_best(task, run, p)
    # a backbone that never trained is the cached one: its val/test features come from (and go to) the cache
    cached = (task.uses_feature_cache(recipe) and recipe.strategy.cache != "none"
              and not p.schedule.ever_trains_backbone(recipe.trainer.epochs))
    score = trainer.checkpoint_callback.best_model_score
    metrics = {
        task.monitor.name: float(score) if score is not None else None,
        "best_epoch": best.get("epoch"),
        "epochs": trainer.current_epoch,
        "strategy": recipe.strategy.name,
        "backbone": recipe.model.backbone,
        "precision": p.precision,
        "train_samples": len(p.splits.train),
        "val_samples": len(p.splits.val),
        "train_seconds": round(seconds, 2),
        # the epochs this process trained: a resumed run's earlier epochs took time that `seconds` does not hold
        "samples_per_second": (round(len(p.splits.train) * (trainer.current_epoch - first.epoch) / seconds, 1)
                               if seconds else None),
    }
    if resume:
        metrics["resumed_from_epoch"] = first.epoch
    metrics.update(task.final_metrics(p, cached))
    metrics.update(weights=p.backbone.weights_id, **p.notes)
    run.write_metrics(metrics)
    close_trackers(trackers, run.path, metrics)
    return Run(run.path, metrics)


def _export_best(task, run: RunDir, p) -> dict:
    """The model files of the run's best checkpoint (the model is left on the CPU with its weights)."""
    best = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)
    p.model.load_state_dict(best["state_dict"])
    p.model.to("cpu").eval()
    task.write_model(run, p)
    return best


def _epochs_finished(run: RunDir) -> int | None:
    """The epochs of a run that finished (its metrics.json is written at the end), None for an unfinished one."""
    try:
        done = run.read_metrics().get("epochs")
    except (OSError, ValueError, AttributeError):
        return None
    return done if isinstance(done, int) else None


def _rebuild(task, run: RunDir, p, done: int) -> Run:
    """`--resume` of a finished run: nothing to train; its model files are written again from its best checkpoint,
    its metrics and a temperature `sft eval` fitted stay as they are."""
    if not run.best_checkpoint.exists():
        raise UserError(f"{run.path} is finished but has no {run.best_checkpoint}: its model cannot be rebuilt")
    log.warning(f"{run.path} is finished: its {done} epochs are trained, trainer.epochs is {p.recipe.trainer.epochs}"
                f"; nothing to train. Its model files are written again from {run.best_checkpoint}, its metrics.json "
                f"is unchanged. To train longer, resume with trainer.epochs above {done}.")
    fitted = stored_temperature(run.path)  # what sft eval fitted on this model is kept
    _export_best(task, run, p)
    if fitted is not None:
        set_temperature(run.path, *fitted)
    return Run(run.path, run.read_metrics(), finished_before=True)


class MidEpochCheckpoint(ModelCheckpoint):
    """Lightning's checkpoint by time or steps, written only after an optimizer step: gradients accumulated over
    several batches are not in a checkpoint, so one written between them could not be resumed exactly."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if optimizer_stepped(trainer, batch_idx):
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)


class FirstEpoch(Callback):
    """The epoch training starts at in this process: 0, or where a resumed run's checkpoint left off."""
    epoch = 0

    def on_train_start(self, trainer, module) -> None:
        self.epoch = trainer.current_epoch


def _trainer(recipe: Recipe, run: RunDir, precision: str, monitor: Monitor, extra: list[Callback]):
    t = recipe.trainer
    callbacks: list[Callback] = [
        # the weights alone: a run resumes from last.ckpt, and best.ckpt only gives the final model its weights
        # (without AdamW's two moments a third of the size, written faster)
        BestCheckpoint(dirpath=run.checkpoints, filename="best", monitor=monitor.name, mode=monitor.mode,
                       save_weights_only=True, enable_version_counter=False),
        # every epoch, improved or not: Lightning's save_last only writes when a monitored checkpoint is saved,
        # which would resume a run from its best epoch instead of its latest
        ModelCheckpoint(dirpath=run.checkpoints, filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False),
        # and inside epochs, by time or steps: the data module's state says which batches are done
        MidEpochCheckpoint(dirpath=run.checkpoints, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False, every_n_train_steps=t.checkpoint_steps,
                           train_time_interval=None if t.checkpoint_steps else timedelta(minutes=t.checkpoint_minutes)),
        LearningRateMonitor(logging_interval="step"),
        *extra,
    ]
    if t.ema:
        callbacks.append(EMA(t.ema))
    if t.early_stopping:
        callbacks.append(EarlyStopping(monitor=monitor.name, mode=monitor.mode, patience=t.early_stopping))
    csv_log = run.path / "logs" / "metrics.csv"
    if csv_log.exists():  # Lightning's CSVLogger deletes an existing file: keep a resumed run's earlier epochs
        csv_log.rename(csv_log.with_name(f"metrics.before-resume-{len(list(csv_log.parent.glob('metrics*')))}.csv"))
    return build_trainer(recipe, precision, callbacks, max_epochs=t.epochs, logger=local_loggers(t, run.path),
                         default_root_dir=run.path, log_every_n_steps=t.log_every_n_steps,
                         accumulate_grad_batches=recipe.optim.accumulate)
