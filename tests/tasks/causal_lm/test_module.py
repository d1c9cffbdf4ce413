"""The answer loss: packing gives exactly the losses of separate, padded sequences (positions restart, attention
stays inside each example), and gradient accumulation gives the step of one large batch (normalised by the answer
tokens of the whole step, not averaged per micro-batch)."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from sft.data.chat import ChatCollate, encode_chat
from sft.models.causal_lm import create_causal_lm
from sft.tasks.causal_lm.module import ChatLM, answer_loss
from sft.tasks.causal_lm.recipe import CausalLMRecipe
from sft.training.strategies import Schedule

CHATS = [[{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
         [{"role": "user", "content": "Count to five."},
          {"role": "assistant", "content": "One, two, three, four, five."}],
         [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"},
          {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "and?"},
          {"role": "assistant", "content": "Nothing more to say, really, nothing at all."}],
         [{"role": "user", "content": "Yes or no?"}, {"role": "assistant", "content": "No"}]]


@pytest.fixture(scope="module")
def encoded(tiny_causal_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    return tokenizer, [encode_chat(tokenizer, chat, 256) for chat in CHATS]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked(tiny_causal_lm, encoded, attention):
    tokenizer, items = encoded
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, attn_implementation=attention).eval()
    with torch.no_grad():
        packed = answer_loss(model, ChatCollate(tokenizer.pad_token_id, pack=True)(items))
        padded = answer_loss(model, ChatCollate(tokenizer.pad_token_id, pack=False)(items))
        alone = [answer_loss(model, ChatCollate(tokenizer.pad_token_id, pack=True)([e])) for e in items]
    assert int(packed[1]) == int(padded[1]) == sum(int(n) for _, n in alone) == sum(e.trainable for e in items)
    assert torch.allclose(packed[0], padded[0], rtol=1e-4)
    assert torch.allclose(packed[0], sum(s for s, _ in alone), rtol=1e-4)  # nothing leaks between examples


def _step(folder, items, pad, batch_size: int, accumulate: int) -> dict:
    torch.manual_seed(0)
    recipe = CausalLMRecipe.model_validate({
        "task": "causal-lm", "data": {"train": "unused"}, "strategy": {"name": "full"},
        "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "scheduler": "constant"}})
    backbone = create_causal_lm(str(folder), "pretrained", 256, True, "unused")
    schedule = Schedule(recipe.strategy, backbone.groups)
    module = ChatLM(backbone, schedule, recipe)
    loader = DataLoader(items, batch_size=batch_size, collate_fn=ChatCollate(pad, pack=True))
    trainer = L.Trainer(max_steps=1, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)
    return {k: v.detach().clone() for k, v in module.backbone.named_parameters()}


def test_accumulated_micro_batches_step_like_one_large_batch(tiny_causal_lm, encoded):
    tokenizer, items = encoded
    assert len({e.trainable for e in items}) > 1  # unequal answers: averaging per micro-batch would differ
    large = _step(tiny_causal_lm, items, tokenizer.pad_token_id, batch_size=4, accumulate=1)
    accumulated = _step(tiny_causal_lm, items, tokenizer.pad_token_id, batch_size=2, accumulate=2)
    start = dict(create_causal_lm(str(tiny_causal_lm), "pretrained", 256, True, "unused").module.named_parameters())
    moved = max((large[k] - start[k]).abs().max() for k in large)
    assert moved > 1e-4
    for k in large:
        assert torch.allclose(large[k], accumulated[k], atol=1e-6, rtol=1e-4), k
