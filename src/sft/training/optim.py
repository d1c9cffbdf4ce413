"""Optimizer and LR schedule: one parameter group per (backbone group, decay or not), fixed for the whole run.

Every parameter is in the optimizer from the first step, frozen or not: frozen ones get no gradient and are skipped,
so unfreezing later never changes the optimizer's groups and a resumed run restores them one to one (the mismatch
that breaks resuming freeze schedules in hand-made setups). Norm weights and biases get no weight decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sft.recipe import Optim
from sft.training.strategies import Schedule


def param_groups(backbone: nn.Module, head: nn.Module, schedule: Schedule, lr: float, weight_decay: float) -> list:
    named = dict(backbone.named_parameters())
    blocks = [(f"backbone.{i}", [named[n] for n in group], lr * scale)
              for i, (group, scale) in enumerate(zip(schedule.groups, schedule.lr_scales()))]
    blocks.append(("head", list(head.parameters()), lr))
    groups = []
    for name, params, group_lr in blocks:  # names label the LR curves in the logs
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups += [{"params": ps, "lr": group_lr, "weight_decay": wd, "name": label}
                   for ps, wd, label in ((decay, weight_decay, name), (no_decay, 0.0, f"{name}.no_decay")) if ps]
    return groups


def build_optimizer(cfg: Optim, backbone: nn.Module, head: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    groups = param_groups(backbone, head, schedule, cfg.lr, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(cfg: Optim, epochs: int, optimizer: torch.optim.Optimizer, total_steps: int):
    """A per-step schedule; its state is in Lightning's checkpoint, so resuming continues the same curve."""
    total_steps = max(total_steps, 1)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps)
    if cfg.scheduler == "step":
        steps_per_epoch = max(total_steps // epochs, 1)
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_epochs * steps_per_epoch, gamma=cfg.step_gamma)
    if cfg.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = int(cfg.warmup * total_steps)

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


# optim.lr: auto. The head's LR for AdamW/Adam (SGD: 10x). A new head or a convnet tolerates 1e-3; a pretrained
# transformer fine-tuned at 1e-3 loses most of what it knew (5e-5, the Hugging Face Trainer's default, suits it), and
# LoRA adapters sit between the two.
AUTO_LR = {"head": 1e-3, "convnet": 1e-3, "transformer": 5e-5, "lora": 5e-4}


def auto_lr(strategy: str, optimizer: str, backbone: nn.Module) -> tuple[float, str]:
    """(lr, kind) for `optim.lr: auto`, from what trains (strategy) and what the backbone is."""
    if strategy == "linear-probe":
        kind = "head"
    elif strategy == "lora":
        kind = "lora"
    else:
        kind = "transformer" if is_transformer(backbone) else "convnet"
    return AUTO_LR[kind] * (10 if optimizer == "sgd" else 1), kind


# trainer.epochs: auto (instruction tuning). A large set needs passes and a tiny one steps, but not many: on the
# fortunes questions (LoRA rank 16 at 5e-4, 200 test questions) 86 conversations gave exact match 0.50 after 11
# steps, 0.64 after 33 and 0.47 after 88 (over-fitted from the first epoch on); 43 gave 0.45 after 18 steps and 0.60
# after 36. So 3 epochs, and at least AUTO_STEPS steps.
AUTO_EPOCHS, AUTO_STEPS = 3, 32


def auto_epochs(samples: int, per_step: int) -> tuple[int, str]:
    """(epochs, why) for `trainer.epochs: auto`: `samples` training examples, `per_step` of them per optimizer step."""
    steps = max(1, math.ceil(samples / per_step))
    by_steps = math.ceil(AUTO_STEPS / steps)
    if by_steps > AUTO_EPOCHS:
        return by_steps, f"at least {AUTO_STEPS} optimizer steps ({steps} per epoch)"
    return AUTO_EPOCHS, f"{AUTO_EPOCHS} epochs of {steps} optimizer steps"


def is_transformer(module: nn.Module) -> bool:
    """Attention blocks anywhere (BERT-like encoders, ViTs): the models that want small fine-tuning LRs."""
    return any(isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention") for m in module.modules())
