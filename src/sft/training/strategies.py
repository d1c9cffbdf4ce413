"""Fine-tuning strategies: which backbone groups train at which epoch, at what learning rate, and what BatchNorm does.

A strategy is a pure function of the epoch, so the freeze state after a resume is exactly the one of the uninterrupted
run. Groups are the backbone's own stages (timm's `group_matcher`, torchvision's feature blocks), never hand-typed
layer names. Frozen parts are also put in eval mode, so their BatchNorm running statistics do not drift (the seed's
example, and many hand-written loops, freeze `requires_grad` only).
"""

from __future__ import annotations

from torch import nn

from sft.models.lora import is_lora_parameter
from sft.recipe import Strategy as StrategyConfig


class Schedule:
    """The freeze schedule and per-group learning-rate scales of one run."""

    def __init__(self, config: StrategyConfig, groups: list[list[str]]):
        self.config = config
        self.groups = groups

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def trainable_groups(self, epoch: int) -> int:
        """How many backbone groups, counted from the head down, train during `epoch`."""
        c, n = self.config, self.n_groups
        if c.name == "linear-probe":
            return 0
        if c.name in ("full", "lora"):  # lora: every group holds adapters; only they train
            return n
        if c.name == "partial":
            return min(c.trainable_groups, n)
        if c.name == "two-stage":
            return 0 if epoch < c.head_epochs else n
        if c.name == "gradual":
            return min(n, epoch // c.unfreeze_every)
        raise ValueError(c.name)

    def head_only(self, epoch: int) -> bool:
        return self.trainable_groups(epoch) == 0

    def ever_trains_backbone(self, epochs: int) -> bool:
        return any(not self.head_only(e) for e in range(epochs))

    def lr_decay(self) -> float:
        decay = self.config.lr_decay
        if decay == "auto":
            return 0.1 ** (1 / max(self.n_groups, 1)) if self.config.name == "two-stage" else 1.0
        return decay

    def lr_scales(self) -> list[float]:
        """LR multiplier of each group, input side first: the group just below the head gets lr_decay**1."""
        decay = self.lr_decay()
        return [decay ** (self.n_groups - i) for i in range(self.n_groups)]

    def apply(self, backbone: nn.Module, epoch: int) -> None:
        """Set requires_grad and train/eval mode of the backbone for `epoch` (call again after validation)."""
        k = self.trainable_groups(epoch)
        trainable = {name for group in self.groups[self.n_groups - k:] for name in group} if k else set()
        if self.config.name == "lora":
            trainable = {name for name in trainable if is_lora_parameter(name)}
        for name, param in backbone.named_parameters():
            param.requires_grad_(name in trainable)
        backbone.train()
        set_frozen_modules_eval(backbone)


def set_frozen_modules_eval(module: nn.Module) -> None:
    """Put every module whose parameters are all frozen in eval mode: BatchNorm keeps its running statistics and
    dropout is off inside frozen parts. Parameter-free modules (activations, pooling) follow their parent."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        set_frozen_modules_eval(child)
