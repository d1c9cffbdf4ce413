"""Conversations for instruction tuning: reading them (JSONL `messages` or `prompt`/`completion`, CSV with two
columns), turning them into tokens with labels on the assistant's answers only, and batching them (packed or padded).

The answer mask comes from rendering growing prefixes of each conversation with the tokenizer's own chat template:
the text up to an answer (with the generation prompt) is a prefix of the text through it, and the characters in
between are the answer. The whole conversation is then tokenized once with character offsets, so no response
template has to tokenize the same way in context (trl 980, 1183), and stock templates without generation markers work
(transformers 34172). The end-of-turn token after each answer is inside its span, so it is trained and the tuned
model stops (trl 976); when a template ends answers with no special token, the tokenizer's EOS is appended.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from sft.core.textfile import need_file
from sft.data.samples import Samples
from sft.data.texts import jsonl_rows, table_rows
from sft.errors import UserError

ROLES = ("system", "user", "assistant")
IGNORE = -100  # labels that never count: prompts, template text, padding
CHAT_FORMATS = ("csv", "tsv", "jsonl")


def read_chats(path, *, format: str = "auto", prompt_column: str = "prompt",
               completion_column: str = "completion") -> Samples:
    """Conversations from a JSONL file (`messages`: [{role, content}, ...], or `prompt` + `completion` keys) or a
    CSV/TSV file (the prompt and completion columns, or its only two columns); ids are `file:line`. Items are lists
    of {role, content} messages, without class labels (splits are plain seeded draws)."""
    path = need_file(path, "a JSONL file of conversations (`messages`, or `prompt` and `completion`) or a CSV/TSV "
                           "file with prompt and completion columns")
    if format == "auto":
        format = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(path.suffix.lower(), "")
    if format not in CHAT_FORMATS:
        raise UserError(f"{path}: conversations are read from {', '.join(CHAT_FORMATS)} files (by suffix or "
                        f"data.*.format)")
    rows = jsonl_rows(path) if format == "jsonl" else table_rows(path, "\t" if format == "tsv" else ",")
    chats, ids = [], []
    for line, row in rows:
        where = f"{path}:{line}"
        chats.append(_conversation(row, where, prompt_column, completion_column, table=format != "jsonl"))
        ids.append(where)
    if not chats:
        raise UserError(f"{path}: no conversations")
    return Samples(chats, None, [], ids, kind="chat")


def _conversation(row: dict, where: str, prompt_column: str, completion_column: str, table: bool) -> list[dict]:
    if "messages" in row and not table:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects")
        out = []
        for k, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UserError(f"{where}: message {k + 1} must be an object with `role` and `content`")
            if m["role"] not in ROLES:
                raise UserError(f"{where}: message {k + 1} has unknown role {m['role']!r}; expected one of "
                                f"{', '.join(ROLES)}")
            if not isinstance(m["content"], str):
                raise UserError(f"{where}: message {k + 1}: content must be a string")
            if m["role"] == "assistant" and not m["content"].strip():
                raise UserError(f"{where}: message {k + 1} is an empty answer")
            out.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" for m in out):
            raise UserError(f"{where}: no assistant turn; there is nothing to learn from this conversation")
        return out
    columns = [prompt_column, completion_column]
    if table and not all(c in row for c in columns) and len(row) == 2:
        columns = list(row)  # a two-column file: prompt, then completion, whatever the header says
    missing = [c for c in columns if c not in row]
    if missing:
        keys = "`messages` or " if not table else ""
        raise UserError(f"{where}: expected {keys}`{prompt_column}` and `{completion_column}`; found "
                        f"{sorted(row)} (set data.prompt_column / data.completion_column)")
    prompt, answer = (str(row[c] if row[c] is not None else "") for c in columns)
    if not prompt.strip():
        raise UserError(f"{where}: empty prompt")
    if not answer.strip():
        raise UserError(f"{where}: empty answer")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def answer_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant answer (end-of-turn included)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        through = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        start = None
        for generation_prompt in (True, False):  # templates without a generation prompt: the header is trained
            before = tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                                   add_generation_prompt=generation_prompt) if i else ""
            if through.startswith(before) and text.startswith(through):
                start = len(before)
                break
        if start is None:
            raise UserError("the model's chat template renders a conversation differently from its prefixes "
                            "(e.g. it rewrites earlier turns), so the answers cannot be located; use "
                            "single-turn data or another template")
        end = max(start, len(through.rstrip()))  # the newline after the end-of-turn token is not an answer
        spans.append((start, end))
    return text, spans


def end_tokens(tokenizer) -> list[str]:
    """Special tokens that can close an answer: EOS and the template's end-of-turn markers."""
    names = [tokenizer.eos_token] + [t for t in tokenizer.all_special_tokens if t != tokenizer.pad_token]
    return [t for t in dict.fromkeys(names) if t]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    length: int  # tokens before truncation
    trainable: int  # answer tokens kept after truncation


def encode_chat(tokenizer, messages: list[dict], max_length: int) -> Encoded:
    """Token ids and labels (answer tokens only, the rest IGNORE), truncated to max_length tokens."""
    text, spans = answer_spans(tokenizer, messages)
    closers = end_tokens(tokenizer)
    # an answer whose span ends with no special token gets the EOS, so the model learns to stop
    for k in range(len(spans) - 1, -1, -1):
        start, end = spans[k]
        if not any(text[start:end].rstrip().endswith(t) for t in closers):
            text = text[:end] + tokenizer.eos_token + text[end:]
            shift = len(tokenizer.eos_token)
            spans = [(s + (shift if s >= end else 0), e + (shift if e >= end else 0)) for s, e in spans]
            spans[k] = (start, end + shift)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    k = 0
    for t, (s, _) in enumerate(offsets):
        while k < len(spans) and s >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= s < spans[k][1] and t > 0:
            labels[t] = ids[t]
    kept = labels[:max_length]
    return Encoded(ids[:max_length], kept, len(ids), sum(x != IGNORE for x in kept))


class ChatDataset(Dataset):
    """Conversations tokenized once (ids, labels); the same for training and evaluation."""

    def __init__(self, samples: Samples, tokenizer, max_length: int):
        self.samples = samples
        self.encoded = [encode_chat(tokenizer, m, max_length) for m in samples.items]

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> Encoded:
        return self.encoded[i]

    def check(self, name: str, max_length: int) -> dict:
        """Facts for the run log; a clear error when some examples keep no answer token (the silent failure of
        training on nothing)."""
        empty = [self.samples.ids[i] for i, e in enumerate(self.encoded) if e.trainable == 0]
        if empty:
            raise UserError(f"{name}: {len(empty)} of {len(self)} example(s) have no answer token left to train, "
                            f"e.g. {empty[:3]} (the prompt fills data.max_length={max_length}: raise it or shorten "
                            f"the prompts)")
        return {"examples": len(self), "truncated": sum(e.length > max_length for e in self.encoded),
                "trainable_tokens": sum(e.trainable for e in self.encoded),
                "tokens": sum(len(e.input_ids) for e in self.encoded)}


class ChatCollate:
    """A list of Encoded -> a batch. Packed: one row holding every example back to back, positions restarting at 0
    for each, no attention mask (transformers then builds a mask that keeps each example to itself, as
    DataCollatorWithFlattening relies on); no padding at all. Padded: right padding with the pad token, an attention
    mask, IGNORE labels on the padding. Either way `labels` are the per-token targets before the shift."""

    def __init__(self, pad_id: int, pack: bool):
        self.pad_id, self.pack = pad_id, pack

    def __call__(self, batch: list[Encoded]) -> dict:
        if self.pack:
            ids = [t for e in batch for t in e.input_ids]
            labels = [t for e in batch for t in e.labels]
            positions = [p for e in batch for p in range(len(e.input_ids))]
            return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                    "position_ids": torch.tensor([positions])}
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e.input_ids)
            ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def final_answers(samples: Samples) -> list[str]:
    """The last assistant answer of each conversation (what exact-match scores)."""
    return [next(m["content"] for m in reversed(chat) if m["role"] == "assistant") for chat in samples.items]


def label_set(answers: list[str], max_labels: int = 50) -> list[str] | None:
    """The distinct answers when they look like labels (single lines of at most 3 words, few distinct values,
    each seen at least twice on average), else None."""
    clean = [a.strip() for a in answers]
    distinct = sorted(set(clean))
    if (len(distinct) <= max_labels and len(distinct) * 2 <= len(clean)
            and all("\n" not in a and len(a.split()) <= 3 for a in distinct)):
        return distinct
    return None
