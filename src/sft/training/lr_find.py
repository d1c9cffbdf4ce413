"""`sft lr-find`: the learning-rate range test (Smith 2017; fastai's `lr_find`) for the recipe's own model, strategy
and parameter groups.

The head's learning rate grows exponentially over the steps, every group scaled alike (the strategy's layer-wise
ratios hold); the smoothed loss stops the sweep at 4x its best. `valley` (fastai's, cautious) and `steep` (fastest
fall, bold) come out, and `suggestion`, which `optim.lr: find` uses: `steep` when only the head trains (a convex
problem on fixed features), else their geometric mean (pretrained weights move). The sweep runs through Lightning on
a fresh model with the freeze state of the recipe's last epoch, which is thrown away afterwards; under DDP the
processes average each step's loss and stop together; only rank 0 writes files.

    sft lr-find recipe.yaml --steps 100
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from sft.core.atomic import atomic_write, atomic_write_json
from sft.core.rundir import check_replaceable, is_child_process, mark
from sft.errors import UserError
from sft.recipe import Recipe
from sft.training.module import NonFiniteLoss
from sft.training.prepare import TrainingTask, prepare
from sft.training.trainer import build_trainer

SMOOTH = 0.98
DIVERGE = 4.0
EARLY = 5  # steps in which a diverging loss means the sweep started too high


class LRSweep(Callback):
    """Sets every param group's LR for step i to lr_i * its ratio to the head's; records the (mean over processes)
    loss; stops when the smoothed loss diverges."""

    def __init__(self, start: float, end: float, steps: int):
        self.start, self.end, self.steps = start, end, steps
        self.lrs: list[float] = []
        self.raw: list[float] = []
        self.losses: list[float] = []  # smoothed, bias-corrected
        self.best = math.inf
        self.diverged_at_once = False
        self.stopped_early = False
        self._avg = 0.0
        self._ratios: list[float] = []

    def lr_at(self, i: int) -> float:
        return self.start * (self.end / self.start) ** (i / max(self.steps - 1, 1))

    def on_train_start(self, trainer, module) -> None:
        # the optimizer was built with the head at lr 1: each group's lr is its ratio to the head's
        self._ratios = [g["lr"] for g in trainer.optimizers[0].param_groups]

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        lr = self.lr_at(len(self.lrs))
        for group, ratio in zip(trainer.optimizers[0].param_groups, self._ratios):
            group["lr"] = lr * ratio
        self.lrs.append(lr)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = getattr(module, "sweep_loss", None)
        value = torch.tensor(float("inf") if loss is None else loss, device=module.device, dtype=torch.float64)
        value = float(trainer.strategy.reduce(value, reduce_op="mean"))  # the same on every process
        i = len(self.raw)
        self.raw.append(value)
        if not math.isfinite(value):
            self.losses.append(float("inf"))
        else:
            self._avg = SMOOTH * self._avg + (1 - SMOOTH) * value
            self.losses.append(self._avg / (1 - SMOOTH ** (i + 1)))
            self.best = min(self.best, self.losses[-1])
        if i < EARLY and (not math.isfinite(value) or value > DIVERGE * self.raw[0]):
            self.diverged_at_once = True
        if self.diverged_at_once or not math.isfinite(value) or self.losses[-1] > DIVERGE * self.best:
            self.stopped_early = len(self.raw) < self.steps
            trainer.should_stop = True


def valley(lrs: list[float], losses: list[float]) -> int:
    """fastai's valley: the index a third plus a sixth into the longest strictly descending subsequence."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def steepest(lrs: list[float], losses: list[float]) -> int:
    """The index where the smoothed loss falls fastest against log(lr)."""
    slope = np.diff(losses) / np.diff(np.log(lrs))
    return int(np.argmin(slope))


def suggest(lrs: list[float], losses: list[float], head_only: bool = False) -> tuple[float, float, float]:
    """(suggestion, valley, steep) learning rates; the suggestion is steep for a head alone, else half-way between
    valley and steep on the log axis. As fastai, the first tenth and the last 5 points are left out (the start is
    noise, the end is the divergence) when enough points remain."""
    lo, hi = len(lrs) // 10, len(lrs) - 5
    if hi - lo < 3:
        lo, hi = 0, len(lrs)
    lrs, losses = lrs[lo:hi], losses[lo:hi]
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    lrs, losses = [lrs[i] for i in finite], [losses[i] for i in finite]
    if len(lrs) < 2:
        raise UserError("lr-find: too few finite losses to suggest a learning rate; widen --start/--end or raise "
                        "--steps")
    low, high = float(lrs[valley(lrs, losses)]), float(lrs[steepest(lrs, losses)])
    return (high if head_only else math.sqrt(low * high)), low, high


def _sweep_module(model):
    """The prepared model as a sweep model: its optimizer without the LR schedule, a non-finite loss recorded
    (and made a zero-gradient step, so every DDP process still takes part) instead of raised, and the freeze state
    of one fixed epoch."""
    base = type(model)

    class Sweep(base):
        read_loss_every = 1  # the sweep reads every loss anyway, and must know which LR made it diverge

        def configure_optimizers(self):
            config = super().configure_optimizers()
            optimizer = config["optimizer"] if isinstance(config, dict) else config
            for group in optimizer.param_groups:  # building a schedule already moved the LRs (warm-up)
                group["lr"] = group.get("initial_lr", group["lr"])
            return optimizer

        def on_train_epoch_start(self) -> None:
            self.schedule.apply(self.backbone, self.sweep_epoch)

        def training_step(self, batch, batch_idx):
            try:
                loss = super().training_step(batch, batch_idx)
            except NonFiniteLoss:
                self.sweep_loss = None
                return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            self.sweep_loss = float(loss.detach())
            return loss

    Sweep.__name__ = Sweep.__qualname__ = f"LRSweep{base.__name__}"
    model.__class__ = Sweep
    return model


def find_lr(task: TrainingTask, recipe: Recipe, out_dir: str | Path | None = None, start: float = 1e-7,
            end: float = 10.0, steps: int = 100, *, overwrite: bool = False) -> dict:
    """Run the LR range test; returns {"suggestion", "valley", "steep", "lrs", "losses" (smoothed), ...}.
    With out_dir, rank 0 also writes lr_find.json and lr_find.png there (refusing to replace them unless
    overwrite)."""
    if not 0 < start < end:
        raise UserError(f"lr-find: need 0 < --start < --end, got {start} and {end}")
    if steps < 10:
        raise UserError(f"lr-find: --steps {steps} is too few for a curve (at least 10; 100 is usual)")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and not is_child_process():
        check_replaceable(out, "lr-find", overwrite=overwrite)
    r = recipe.model_copy(deep=True)
    r.optim.lr = 1.0  # groups are built at their ratio to the head's LR; the sweep multiplies them
    p = prepare(task, r)
    r = p.recipe  # strategy auto resolved as training resolves it (data size and LogME)
    epoch = r.trainer.epochs - 1
    model = _sweep_module(p.model)
    model.sweep_epoch = epoch
    head_only = p.schedule.head_only(epoch)
    cached = task.uses_feature_cache(r) and r.strategy.cache != "none" and head_only
    p.data.head_only = lambda _: cached
    sweep = LRSweep(start, end, steps)
    trainer = build_trainer(r, p.precision, [sweep], max_steps=steps, max_epochs=-1, logger=False,
                            enable_checkpointing=False, limit_val_batches=0)
    started = time.perf_counter()
    trainer.fit(model, datamodule=p.data)
    seconds = time.perf_counter() - started
    if sweep.diverged_at_once:
        raise UserError(f"lr-find: the loss diverged at once (step {len(sweep.raw)}: {sweep.raw[-1]:.4g}, first "
                        f"loss {sweep.raw[0]:.4g}) at learning rate {sweep.lrs[len(sweep.raw) - 1]:.3g}; start the "
                        f"sweep lower, e.g. --start {start / 100:.0e}")
    suggestion, low, steep = suggest(sweep.lrs[:len(sweep.losses)], sweep.losses, head_only)
    groups = [g.get("name", str(i)) for i, g in enumerate(trainer.optimizers[0].param_groups)]
    result = {
        "suggestion": suggestion, "valley": low, "steep": steep, "start": start, "end": end, "steps": steps,
        "steps_done": len(sweep.losses), "stopped_early": sweep.stopped_early, "strategy": r.strategy.name,
        "head_only": head_only,
        "epoch_state": epoch, "group_ratios": dict(zip(groups, sweep._ratios)), "seconds": round(seconds, 2),
        "lrs": sweep.lrs[:len(sweep.losses)], "losses": sweep.losses, "raw_losses": sweep.raw,
    }
    if out is not None and trainer.global_rank == 0:
        write_lr_find(out, result)
    return result


def write_lr_find(out: Path, result: dict) -> None:
    """lr_find.json and lr_find.png (loss against LR, log scale, both suggestions marked), each written atomically."""
    from matplotlib.figure import Figure  # deferred: matplotlib is only needed when a plot is written

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    lrs = np.asarray(result["lrs"])
    losses = np.asarray(result["losses"], dtype=float)
    ax.plot(lrs, result["raw_losses"][:len(lrs)], color="0.8", lw=0.8, label="loss")
    ax.plot(lrs, losses, color="C0", lw=1.6, label="smoothed loss")
    for key, color, label in (("valley", "C1", "valley"), ("suggestion", "C3", "suggestion"), ("steep", "C2", "steep")):
        lr = result[key]
        ax.axvline(lr, color=color, ls="--", lw=1)
        ax.plot([lr], [np.interp(np.log(lr), np.log(lrs), np.where(np.isfinite(losses), losses, np.nan))], "o",
                color=color, label=f"{label} {lr:.2e}")
    finite = losses[np.isfinite(losses)]
    if len(finite):  # the divergence's tail would flatten the interesting part
        low = min(finite.min(), np.nanmin(np.where(np.isfinite(result["raw_losses"]), result["raw_losses"], np.nan)))
        ax.set_ylim(low - 0.05 * abs(low), min(finite.max(), DIVERGE * finite.min()) * 1.05)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head; other groups keep their ratio)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test, strategy {result['strategy']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out / "lr_find.png", lambda tmp: fig.savefig(tmp, format="png"))
    atomic_write_json(out / "lr_find.json", result)
    mark(out, "lr-find")
