"""Generation with the chat template a run trained with, greedy or sampled, batched or streamed token by token."""

from __future__ import annotations

import torch
from torch import nn

from sft.data.chat import end_tokens


def prompt_of(chat: list[dict]) -> list[dict]:
    """A conversation up to (without) its last answer: what generation continues."""
    last = max(i for i, m in enumerate(chat) if m["role"] == "assistant")
    return chat[:last]


@torch.inference_mode()
def generate(model: nn.Module, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 16,
             stream=None) -> list[str]:
    """Answers to conversations (each ending with a user turn), rendered with the chat template, batched with left
    padding; generation ends at EOS or an end-of-turn token. `stream`: a file to print the tokens to as they come
    (one prompt at a time)."""
    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    stop = [i for i in tokenizer.convert_tokens_to_ids(end_tokens(tokenizer)) if i is not None]
    sample = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    step = 1 if stream is not None else batch_size
    answers = []
    try:
        for start in range(0, len(prompts), step):
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[start:start + step]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            streamer = _streamer(tokenizer, stream) if stream is not None else None
            out = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                 pad_token_id=tokenizer.pad_token_id, streamer=streamer, **sample)
            answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [a.strip() for a in answers]


def _streamer(tokenizer, stream):
    """transformers' TextStreamer, printing to `stream` instead of stdout."""
    from transformers import TextStreamer  # deferred: only generation needs it

    class To(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            stream.write(text + ("\n" if stream_end else ""))
            stream.flush()
    return To(tokenizer, skip_prompt=True, skip_special_tokens=True)


