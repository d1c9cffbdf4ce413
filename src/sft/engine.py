"""The engine: a recipe in, a finished run directory out, with Lightning's Trainer doing all the training.

Lightning gives precision, devices/DDP, checkpoints, loggers and progress bars; this module only decides their
settings from the recipe (bf16 + channels_last where the hardware has it) and wires the sft parts together.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint,
                                         RichProgressBar)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from sft.backbones import Preprocess, create_backbone
from sft.classifier import Classifier, NonFiniteLoss
from sft.data import ImageData, build_transforms, load_splits
from sft.errors import UserError
from sft.evaluate import evaluate
from sft.features import cache_key, cached_features, weights_digest
from sft.recipe import Recipe, dump_recipe
from sft.run import ModelInfo, RunDir, export_model, is_child_process
from sft.atomic import atomic_write_text
from sft.strategies import Schedule

# Lightning's advertising and hardware banners, and a deprecation inside Lightning itself, are noise for our users.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


@dataclass
class Run:
    """A finished run: its directory and its metrics."""
    dir: Path
    metrics: dict


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(requested: str, accelerator: str) -> str:
    """auto: bf16-mixed on a GPU or CPU with native bf16 (several times faster for convnets), else fp32."""
    if requested != "auto":
        return requested
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "16": torch.float16}.get(precision.split("-")[0])


def fine_tune(recipe: Recipe, *, overwrite: bool = False, resume: bool = False,
              callbacks: list[Callback] = ()) -> Run:
    """Train as the recipe says; write and return the run directory (checkpoints, logs, model, metrics)."""
    run = RunDir(recipe.run_dir)
    if not is_child_process():
        run.check(overwrite=overwrite, resume=resume)
    L.seed_everything(recipe.seed, workers=True, verbose=False)

    backbone = create_backbone(recipe.model.backbone, recipe.model.weights)
    splits = load_splits(recipe.data, recipe.seed)
    train_tf, eval_tf = build_transforms(backbone.preprocess, recipe.data.image_size, recipe.data.augment)
    schedule = Schedule(recipe.strategy, backbone.groups)
    precision = resolve_precision(recipe.trainer.precision, recipe.trainer.accelerator)
    channels_last = recipe.trainer.channels_last
    if channels_last == "auto":  # NHWC is the fast layout of oneDNN and cuDNN convolutions
        channels_last = any(isinstance(m, torch.nn.Conv2d) for m in backbone.module.modules())
    if channels_last:
        backbone.module.to(memory_format=torch.channels_last)
    if not is_child_process():
        run.start(overwrite=overwrite, resume=resume)
        atomic_write_text(run.recipe, dump_recipe(recipe))
    model = Classifier(backbone.module, backbone.num_features, splits.classes, schedule, recipe, channels_last)

    weights = weights_digest(backbone.module)

    def features(split: str, dataset) -> torch.Tensor:
        key = cache_key(backbone.name, weights, eval_tf, getattr(splits, split).fingerprint(), precision)
        return cached_features(key, model.backbone, dataset, mode=recipe.strategy.cache,
                               cache_dir=recipe.cache_dir, batch_size=max(recipe.data.batch_size, 128),
                               autocast_dtype=autocast_dtype(precision), channels_last=channels_last,
                               device=model.device, num_workers=recipe.data.num_workers)

    head_only = (lambda epoch: schedule.head_only(epoch)) if recipe.strategy.cache != "none" else (lambda e: False)
    data = ImageData(splits, train_tf, eval_tf, batch_size=recipe.data.batch_size,
                     num_workers=recipe.data.num_workers, seed=recipe.seed, head_only=head_only, features=features)
    trainer = _trainer(recipe, run, precision, schedule, list(callbacks))

    started = time.perf_counter()
    try:
        trainer.fit(model, datamodule=data, ckpt_path=str(run.last_checkpoint) if resume else None)
    except NonFiniteLoss as e:
        kept = f"; the last good checkpoint is {run.last_checkpoint}" if run.last_checkpoint.exists() else ""
        raise UserError(f"training stopped: {e}{kept}. Lower optim.lr or set optim.grad_clip.") from None
    seconds = time.perf_counter() - started
    if trainer.global_rank != 0:
        return Run(run.path, {})
    if trainer.interrupted or not run.best_checkpoint.exists():
        return Run(run.path, {"interrupted": True, "epochs_done": trainer.current_epoch})

    best = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    model.to("cpu").eval()
    info = ModelInfo(backbone=backbone.name, classes=splits.classes, num_features=backbone.num_features,
                     preprocess=_used_preprocess(backbone.preprocess, recipe.data.image_size),
                     dropout=recipe.model.dropout, channels_last=channels_last)
    export_model(run, model, info)
    # a backbone that never trained is the cached one: its val/test features come from (and go to) the cache
    cached = recipe.strategy.cache != "none" and not schedule.ever_trains_backbone(recipe.trainer.epochs)
    metrics = _metrics(recipe, trainer, best, data, model, cached, precision, seconds)
    metrics["weights"] = backbone.weights_id
    run.write_metrics(metrics)
    return Run(run.path, metrics)


def _used_preprocess(pre: Preprocess, image_size: int | None) -> Preprocess:
    return replace(pre, input_size=(image_size, image_size)) if image_size else pre


def _trainer(recipe: Recipe, run: RunDir, precision: str, schedule: Schedule, extra: list[Callback]) -> L.Trainer:
    t = recipe.trainer
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor="val_acc", mode="max", save_last=True,
                        enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        *extra,
    ]
    if t.early_stopping:
        callbacks.append(EarlyStopping(monitor="val_acc", mode="max", patience=t.early_stopping))
    if t.progress:
        callbacks.append(RichProgressBar())
    strategy = t.strategy
    if strategy == "ddp" and recipe.strategy.name != "full":
        strategy = "ddp_find_unused_parameters_true"  # frozen groups and cached epochs leave parameters unused
    loggers = [CSVLogger(run.path, name="logs", version=""),
               TensorBoardLogger(run.path / "logs", name="tensorboard", version="")]
    return L.Trainer(
        max_epochs=t.epochs, accelerator=t.accelerator, devices=t.devices, strategy=strategy, precision=precision,
        deterministic=t.deterministic, callbacks=callbacks, logger=loggers, default_root_dir=run.path,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=recipe.optim.grad_clip,
        accumulate_grad_batches=recipe.optim.accumulate, reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False, num_sanity_val_steps=0, enable_progress_bar=t.progress,
        enable_model_summary=False,
    )


def _metrics(recipe, trainer, best, data: ImageData, model, cached: bool, precision: str, seconds: float) -> dict:
    callback, splits = trainer.checkpoint_callback, data.splits
    metrics = {
        "val_acc": float(callback.best_model_score) if callback.best_model_score is not None else None,
        "best_epoch": best.get("epoch"),
        "epochs": trainer.current_epoch,
        "strategy": recipe.strategy.name,
        "backbone": recipe.model.backbone,
        "precision": precision,
        "train_samples": len(splits.train),
        "val_samples": len(splits.val),
        "train_seconds": round(seconds, 2),
        "images_per_second": round(len(splits.train) * trainer.current_epoch / seconds, 1) if seconds else None,
    }
    n = len(splits.classes)
    metrics["val_loss"] = evaluate(model, data.eval_dataset("val", cached), n, precision=precision)["loss"]
    if splits.test is not None:
        test = evaluate(model, data.eval_dataset("test", cached), n, precision=precision,
                        progress=recipe.trainer.progress)
        metrics.update(test_acc=test["accuracy"], test_loss=test["loss"], test_samples=test["samples"])
    return metrics
