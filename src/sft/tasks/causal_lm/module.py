"""The causal-LM LightningModule: cross-entropy on the answer tokens only, summed and divided by the answer tokens of
the whole optimizer step, so gradient accumulation and packing give the loss of one large batch (transformers 34191:
averaging per micro-batch weights short answers more). Held-out answer loss is `val_loss` (min), perplexity its exp.

Only the answer positions go through the output layer: the hidden states are computed for every token, but the
vocabulary projection (49k rows for SmolLM2, much of the compute at this size) runs only where there is a target.

A LoRA run whose base weights are a local file identified by digest checkpoints the adapters alone (a few MB, not
the whole model): the base is rebuilt from that file on resume, and the digest, a checkpoint fact, must match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from sft.data.chat import IGNORE
from sft.models.backbone import Backbone
from sft.tasks.causal_lm.recipe import CausalLMRecipe
from sft.training.module import FineTuneModule
from sft.training.strategies import Schedule


def answer_loss(lm: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over the answer tokens, their count) of a packed or padded batch."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), keep.sum()


class ChatLM(FineTuneModule):
    def __init__(self, backbone: Backbone, schedule: Schedule, recipe: CausalLMRecipe):
        super().__init__(backbone.module, nn.Identity(), schedule, recipe.optim, recipe.trainer.epochs)
        self.val_loss = torchmetrics.MeanMetric()
        self.window_tokens = 0  # answer tokens of the micro-batches since the last optimizer step
        self.base = backbone.module.base  # the frozen base's digest when checkpoints leave it out

    def _saved(self, key: str) -> bool:
        """Whether a checkpoint holds this tensor: all but the frozen base weights of a LoRA run with a digest."""
        return self.base is None or not key.startswith("backbone.") or "lora_" in key or "modules_to_save" in key

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        return state if self.base is None else type(state)((k, v) for k, v in state.items() if self._saved(k))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A full state dict loads as before; an adapters-only one must hold every saved tensor."""
        if self.base is None or not strict:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if self._saved(k)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint does not fit: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
        return result

    def checkpoint_facts(self) -> dict:
        return {"base_weights": self.base} if self.base else {}

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return answer_loss(self.backbone.model, batch)

    def training_step(self, batch, batch_idx):
        total, tokens = self(batch)
        self.window_tokens += int(tokens)
        loss = self.check_finite(total / tokens.clamp(min=1))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=int(tokens))
        # the value of the mean (what the LR range test and progress bar read) with the gradient of the sum:
        # Lightning divides it by the accumulation count, and on_before_optimizer_step turns the accumulated
        # gradient into that of the mean over every answer token of the step
        return total + (loss - total).detach()

    def on_before_optimizer_step(self, optimizer) -> None:
        tokens = torch.tensor(float(self.window_tokens), device=self.device)
        if self.trainer.world_size > 1:  # DDP averages gradients over processes: divide by all their tokens
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="sum")
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / max(float(tokens), 1.0)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale)
        self.window_tokens = 0

    def validation_step(self, batch, batch_idx):
        total, tokens = self(batch)
        if tokens:
            self.val_loss.update(total / tokens, weight=tokens)
        self.log("val_loss", self.val_loss, prog_bar=True, on_step=False, on_epoch=True)
