"""LoRA through peft: low-rank adapters on the backbone's linear layers; the pretrained weights stay frozen.

peft knows the usual target modules of each transformers architecture (query/value for BERT); other models need
`strategy.lora_targets`. The adapter parameters keep their place in the backbone's groups, so the optimizer, the
checkpoints and the run model treat them like any other backbone parameter.
"""

from __future__ import annotations

from torch import nn

from sft.errors import UserError
from sft.recipe import Lora


def add_lora(module: nn.Module, cfg: Lora, auto_targets: str | None = None) -> nn.Module:
    """`module` (a transformers model) wrapped with LoRA adapters as the recipe says; `lora_targets: auto` means
    `auto_targets` (e.g. peft's "all-linear"), or peft's default for the architecture when None."""
    from peft import LoraConfig, get_peft_model

    targets = auto_targets if cfg.lora_targets == "auto" else list(cfg.lora_targets)
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets)
    try:
        return get_peft_model(module, config)
    except ValueError as e:
        names = sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)})
        raise UserError(f"strategy lora: {e}. Set strategy.lora_targets to some of the model's linear layers: "
                        f"{names[:12]}") from None


def is_lora_parameter(name: str) -> bool:
    return "lora_" in name
