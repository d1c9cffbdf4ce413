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
from types import SimpleNamespace
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import (Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint,
                                         RichProgressBar)
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import Dataset

from sft.backbones import Backbone, Preprocess
from sft.balance import FocalLoss, class_weights
from sft.classifier import Classifier, NonFiniteLoss
from sft.data import Inputs, RunData, Splits, load_splits
from sft.errors import UserError
from sft.evaluate import evaluate
from sft.features import cache_key, cached_features, weights_digest
from sft.recipe import Recipe, dump_recipe
from sft.sources import Samples
from sft.run import ModelInfo, RunDir, export_model, is_child_process
from sft.atomic import atomic_write_text
from sft.strategies import Schedule
from sft.tasks import build_backbone, build_inputs, read_split

# Lightning's advertising and hardware banners, and a deprecation inside Lightning itself, are noise for our users.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
log = logging.getLogger("sft")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")  # frozen: on purpose
warnings.filterwarnings("ignore", message=".*(Checkpoint|Experiment logs) directory .* exists and is not empty.*")


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


def use_channels_last(recipe: Recipe, module: torch.nn.Module) -> bool:
    """Resolve trainer.channels_last and convert the module: NHWC is the fast layout of oneDNN/cuDNN convolutions."""
    channels_last = recipe.trainer.channels_last
    if channels_last == "auto":
        channels_last = any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return channels_last


def split_features(recipe: Recipe, name: str, backbone: torch.nn.Module, splits, inputs: Inputs, precision: str,
                   channels_last: bool) -> Callable[[str, Dataset], torch.Tensor]:
    """features(split, dataset): the frozen backbone's features of a split, through the cache. The key holds the
    weights' content, the transform or tokenizer, the data's fingerprint and the precision, so any change
    recomputes them."""
    weights = weights_digest(backbone)
    loaded: dict[str, torch.Tensor] = {}  # head-only epochs ask every epoch: hash and read each split once per run

    def features(split: str, dataset: Dataset) -> torch.Tensor:
        if split not in loaded:
            key = cache_key(name, weights, inputs.key, getattr(splits, split).fingerprint(), precision)
            loaded[split] = cached_features(
                key, backbone, dataset, mode=recipe.strategy.cache, cache_dir=recipe.cache_dir,
                batch_size=max(recipe.data.batch_size, 128), precision=precision,
                channels_last=channels_last, device=next(backbone.parameters()).device,
                num_workers=recipe.data.num_workers, collate_fn=inputs.collate)
        return loaded[split]
    return features


def backbone_features(recipe: Recipe, backbone_name: str, weights: str | None,
                      samples: dict[str, Samples]) -> tuple[dict[str, torch.Tensor], str]:
    """Another backbone's features of the recipe's data, built as training builds them (images: the backbone and its
    eval transform; texts: the encoder and its tokenizer), through the cache; what `sft rank` scores and `sft audit
    --also` probes. Returns the features of each named sample set and the weights' id."""
    r = recipe.model_copy(deep=True)
    r.model.backbone, r.model.weights = backbone_name, weights
    if r.strategy.name in ("lora", "auto"):
        r.strategy.name = "linear-probe"  # the frozen pretrained features are scored, not adapters
    L.seed_everything(recipe.seed, verbose=False)  # randomly initialised candidates are reproducible
    backbone = build_backbone(r)
    inputs = build_inputs(backbone, r.data, r.task)
    precision = resolve_precision(r.trainer.precision, r.trainer.accelerator)
    if r.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        backbone.module.to("cuda")
    channels_last = use_channels_last(r, backbone.module)
    features = split_features(r, backbone.name, backbone.module, SimpleNamespace(**samples), inputs, precision,
                              channels_last)
    return {name: features(name, inputs.eval(s)).float() for name, s in samples.items()}, backbone.weights_id


@dataclass
class Prepared:
    """Everything a run trains, built from the recipe alone (no run directory, no trainer): what `fine_tune`,
    `lr-find` and `rank` share."""
    recipe: Recipe
    backbone: Backbone
    splits: Splits
    inputs: Inputs
    schedule: Schedule
    precision: str
    channels_last: bool
    model: Classifier
    data: RunData
    notes: dict  # facts for the run log and metrics.json (e.g. truncated texts)


def prepare(recipe: Recipe) -> Prepared:
    """Seed, read the data, build the backbone, its inputs, the freeze schedule, the model and the loaders."""
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    backbone = build_backbone(recipe)
    splits = load_splits(recipe.data, recipe.seed, lambda source, classes: read_split(source, recipe.data,
                                                                                       recipe.task, classes))
    inputs = build_inputs(backbone, recipe.data, recipe.task)
    notes = {}
    lengths = inputs.lengths(splits.train) if inputs.lengths is not None else None  # texts: one tokenizer pass
    if lengths is not None:
        notes["truncated_train_texts"] = int((lengths > recipe.data.max_length).sum())
    precision = resolve_precision(recipe.trainer.precision, recipe.trainer.accelerator)
    channels_last = use_channels_last(recipe, backbone.module)
    features = split_features(recipe, backbone.name, backbone.module, splits, inputs, precision, channels_last)
    if recipe.strategy.name == "auto":
        recipe = _choose_strategy(recipe, splits, features("train", inputs.eval(splits.train)), notes)
    schedule = Schedule(recipe.strategy, backbone.groups)
    model = Classifier(backbone.module, backbone.num_features, splits.classes, schedule, recipe, channels_last,
                       loss_fn=build_loss(recipe, splits.train))
    head_only = (lambda epoch: schedule.head_only(epoch)) if recipe.strategy.cache != "none" else (lambda e: False)
    data = RunData(splits, inputs, batch_size=recipe.data.batch_size, num_workers=recipe.data.num_workers,
                   seed=recipe.seed, head_only=head_only, features=features, balance=recipe.data.balance,
                   lengths=lengths if recipe.data.group_by_length else None)
    return Prepared(recipe, backbone, splits, inputs, schedule, precision, channels_last, model, data, notes)


def _choose_strategy(recipe: Recipe, splits: Splits, train_features: torch.Tensor, notes: dict) -> Recipe:
    """strategy: auto -> linear-probe, two-stage or full, from the data size and the LogME of the backbone's
    features on (up to 2,000 of) the training samples; these features come from the cache the head-only epochs
    use anyway."""
    from sft.sources import stratified_subset
    from sft.strategy_auto import choose_strategy
    from sft.transfer import logme

    labels = splits.train.labels
    idx = stratified_subset(labels, min(len(labels), 2000), recipe.seed) if len(labels) > 2000 else slice(None)
    score = logme(train_features[idx].numpy(), labels[idx])
    name, reason = choose_strategy(len(labels), len(splits.classes), {"logme": score})
    log.warning(f"strategy auto: {name}, because {reason}")
    notes["strategy_auto"] = {"chosen": name, "reason": reason, "logme": round(float(score), 4)}
    return recipe.model_copy(update={"strategy": recipe.strategy.model_copy(update={"name": name})})


def fine_tune(recipe: Recipe, *, overwrite: bool = False, resume: bool = False,
              callbacks: list[Callback] = ()) -> Run:
    """Train as the recipe says; write and return the run directory (checkpoints, logs, model, metrics)."""
    run = RunDir(recipe.run_dir)
    if not is_child_process():
        run.check(overwrite=overwrite, resume=resume)
    lr_found = None
    if resume and run.recipe.exists():  # what the interrupted run resolved (a found LR, an auto strategy)
        from sft.recipe import load_recipe
        done = load_recipe(run.recipe)
        recipe = recipe.model_copy(update={"optim": done.optim, "strategy": done.strategy})
    if recipe.optim.lr == "find":
        from sft.lr_find import find_lr
        lr_found = find_lr(recipe)
        log.warning(f"optim.lr find: {lr_found['suggestion']:.3g} (LR range test)")
        recipe = recipe.model_copy(update={"optim": recipe.optim.model_copy(update={"lr": lr_found["suggestion"]})})
    p = prepare(recipe)
    recipe = p.recipe  # resolved: strategy auto -> the chosen one
    trainer = _trainer(recipe, run, p.precision, list(callbacks))  # before the run directory: bad settings leave none
    if not is_child_process():
        run.start(overwrite=overwrite, resume=resume)
        atomic_write_text(run.recipe, dump_recipe(recipe))
        if lr_found is not None:
            from sft.lr_find import write_lr_find
            write_lr_find(run.path / "lr-find", lr_found)
            p.notes["lr_find"] = {k: lr_found[k] for k in ("suggestion", "valley", "steep", "steps_done", "seconds")}
    model, data, schedule, splits, backbone = p.model, p.data, p.schedule, p.splits, p.backbone
    if p.notes.get("truncated_train_texts"):
        log.warning(f"{p.notes['truncated_train_texts']} of {len(splits.train)} training texts are longer than "
                    f"data.max_length={recipe.data.max_length} tokens and are truncated")

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
                     dropout=recipe.model.dropout, channels_last=p.channels_last, task=recipe.task,
                     lora=recipe.strategy.model_dump() if recipe.strategy.name == "lora" else None)
    export_model(run, model, info)
    # a backbone that never trained is the cached one: its val/test features come from (and go to) the cache
    cached = recipe.strategy.cache != "none" and not schedule.ever_trains_backbone(recipe.trainer.epochs)
    metrics = _metrics(recipe, trainer, best, data, model, cached, p.precision, seconds)
    metrics.update(weights=backbone.weights_id, **p.notes)
    run.write_metrics(metrics)
    return Run(run.path, metrics)


def build_loss(recipe: Recipe, train) -> torch.nn.Module:
    """Cross-entropy or focal loss, with class weights when data.balance is class-weights."""
    weight = (class_weights(train.labels, train.classes, recipe.data.class_weights)
              if recipe.data.balance == "class-weights" else None)
    if recipe.optim.loss == "focal":
        return FocalLoss(recipe.optim.focal_gamma, weight=weight, label_smoothing=recipe.optim.label_smoothing)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.optim.label_smoothing)


def _used_preprocess(pre, image_size: int | None):
    if isinstance(pre, Preprocess) and image_size:
        return replace(pre, input_size=(image_size, image_size))
    return pre


def _trainer(recipe: Recipe, run: RunDir, precision: str, extra: list[Callback]) -> L.Trainer:
    t = recipe.trainer
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor="val_acc", mode="max",
                        enable_version_counter=False),
        # every epoch, improved or not: Lightning's save_last only writes when a monitored checkpoint is saved,
        # which would resume a run from its best epoch instead of its latest
        ModelCheckpoint(dirpath=run.checkpoints, filename="last", monitor=None, save_top_k=1,
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
    try:
        return _lightning_trainer(recipe, run, precision, callbacks, strategy)
    except (MisconfigurationException, ValueError, RuntimeError, ImportError) as e:
        raise UserError(f"trainer settings (accelerator={t.accelerator}, devices={t.devices}, strategy={t.strategy}, "
                        f"precision={t.precision}): {e}") from None


def _lightning_trainer(recipe: Recipe, run: RunDir, precision: str, callbacks: list[Callback], strategy: str):
    t = recipe.trainer
    csv_log = run.path / "logs" / "metrics.csv"
    if csv_log.exists():  # Lightning's CSVLogger deletes an existing file: keep a resumed run's earlier epochs
        csv_log.rename(csv_log.with_name(f"metrics.before-resume-{len(list(csv_log.parent.glob('metrics*')))}.csv"))
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


def _metrics(recipe, trainer, best, data: RunData, model, cached: bool, precision: str, seconds: float) -> dict:
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
    for split in ("val", "test"):
        if getattr(splits, split) is None:
            continue
        result = evaluate(model, data.eval_dataset(split, cached), len(splits.classes), precision=precision,
                          progress=recipe.trainer.progress and split == "test",
                          collate_fn=None if cached else data.collate)
        metrics.update(_split_metrics(split, result, splits.classes))
    return metrics


def _split_metrics(split: str, result: dict, classes: list[str]) -> dict:
    """evaluate()'s result under metrics.json's names: test_acc, test_balanced_acc, test_macro_f1, ..."""
    out = {f"{split}_loss": result["loss"], f"{split}_balanced_acc": result["balanced_accuracy"],
           f"{split}_macro_f1": result["macro_f1"], f"{split}_samples": result["samples"],
           f"{split}_recall": dict(zip(classes, result["per_class_recall"]))}
    if split == "test":
        out["test_acc"] = result["accuracy"]
    return out


def audit_data(recipe: Recipe, out_dir: str | Path, *, overwrite: bool = False, also: list[str] | tuple = ()):
    """`sft audit`: the recipe's data seen through its backbone's (cached) features: class counts, duplicates,
    leakage, label issues and outliers, written to out_dir as audit.json, suspects.csv and audit.html. `also`:
    more backbones (`backbone` or `backbone@weights`) whose probes join the label-issue vote."""
    from sft.audit import audit, write_audit
    from sft.rank import parse_candidate

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds an audit; pass --overwrite to replace it or --out another folder")
    p = prepare(recipe.model_copy(update={"data": recipe.data.model_copy(update={"augment": "none"})}))
    samples = {name: s for name, s in (("train", p.splits.train), ("val", p.splits.val), ("test", p.splits.test))
               if s}
    arrays = {name: p.data.features(name, p.data.eval_sets[name]).numpy() for name in samples}
    more = []
    for text in also:
        features, _ = backbone_features(p.recipe, *parse_candidate(text, p.recipe), samples)
        more.append({name: x.numpy() for name, x in features.items()})
    report = audit(samples, arrays, seed=recipe.seed, more_features=more)
    report.backbones = [f"{p.recipe.model.backbone}@{p.recipe.model.weights}", *also]
    write_audit(report, samples, out)
    return report
