"""A finished causal-LM run: its model files, generation with the chat template, and scoring answers.

    model/        the merged model (LoRA folded in) with its tokenizer: a Hugging Face folder transformers alone loads
    adapter/      lora runs: the peft adapter alone (adapter_config.json, adapter_model.safetensors)
    model.json    the base model, sequence length, packing, the answers' label set (when answers are labels)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from sft.core.atomic import atomic_write_dir, atomic_write_json
from sft.data.chat import ChatCollate, ChatDataset, end_tokens
from sft.data.loaders import eval_batches
from sft.data.samples import Samples
from sft.errors import UserError
from sft.models.causal_lm import load_causal_lm
from sft.tasks.base import read_info
from sft.tasks.causal_lm.module import answer_loss


@dataclass
class ChatInfo:
    """What a finished run needs beside its model folder (model.json)."""
    backbone: str  # as the recipe named it
    base: str | None  # the base model's folder, for generations "before" (None: not available offline)
    max_length: int
    pack: bool
    labels: list[str] | None  # the distinct training answers, when they are labels
    strategy: str
    task: str = "causal-lm"


def export_run(path: Path, lm: nn.Module, tokenizer, info: ChatInfo) -> None:
    """model/ (merged), adapter/ (lora) and model.json, each written atomically."""
    is_peft = hasattr(lm, "merge_adapter")
    if is_peft:
        atomic_write_dir(path / "adapter", lambda tmp: lm.save_pretrained(tmp))

    def write_model(tmp: str) -> None:
        if is_peft:
            _save_merged(lm, tmp)
        else:
            lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    atomic_write_dir(path / "model", write_model)
    atomic_write_json(path / "model.json", asdict(info))


def _save_merged(lm, folder: str) -> None:
    """Save the model with its adapters folded in, as the plain architecture: merged in place for the save, then
    unmerged (no copy of the whole model); the LoRA wrappers' names are mapped back to the plain layers'."""
    lm.merge_adapter()
    try:
        model = lm.get_base_model()
        state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
        model.save_pretrained(folder, state_dict=state)
    finally:
        lm.unmerge_adapter()


def read_chat_info(run_dir: str | Path) -> ChatInfo:
    """A finished run's model.json (its model/ folder checked to be there)."""
    run = Path(run_dir)
    if not ((run / "model").is_dir() and (run / "model.json").is_file()):
        raise UserError(f"{run}: no finished model (model/, model.json); the run did not complete")
    return read_info(run / "model.json", ChatInfo)


def load_tuned(run_dir: str | Path) -> tuple[nn.Module, object]:
    """A finished run's merged model (eval mode) and its tokenizer."""
    model, tokenizer, _ = load_causal_lm(str(Path(run_dir) / "model"), "pretrained", "")
    return model.eval(), tokenizer


def load_base(info: ChatInfo):
    """The model before tuning, when its folder is still there."""
    if not info.base or not Path(info.base).is_dir():
        return None
    model, tokenizer, _ = load_causal_lm(info.base, "pretrained", "")
    return model.eval(), tokenizer


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


@torch.inference_mode()
def held_out_loss(model: nn.Module, tokenizer, samples: Samples, max_length: int, batch_size: int = 8,
                  progress: bool = False) -> dict:
    """Answer-token loss and perplexity of a split (the loss summed over tokens, then divided)."""
    dataset = ChatDataset(samples, tokenizer, max_length)
    collate = ChatCollate(tokenizer.pad_token_id, pack=True)
    total, tokens = 0.0, 0
    for batch in eval_batches(dataset, batch_size, collate, progress, "loss"):
        s, n = answer_loss(model, {k: v.to(model.device) for k, v in batch.items()})
        total, tokens = total + float(s), tokens + int(n)
    loss = total / max(tokens, 1)
    return {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3), "answer_tokens": tokens}


def label_scores(answers: list[str], truth: list[str], labels: list[str]) -> dict:
    """Exact match (case and surrounding punctuation ignored) and the share of answers inside the label set."""
    norm = lambda s: s.strip().strip(".!\"'").strip().lower()  # noqa: E731
    known = {norm(label) for label in labels}
    exact = sum(norm(a) == norm(t) for a, t in zip(answers, truth))
    inside = sum(norm(a) in known for a in answers)
    n = max(len(answers), 1)
    return {"exact_match": round(exact / n, 4), "in_label_set": round(inside / n, 4)}
