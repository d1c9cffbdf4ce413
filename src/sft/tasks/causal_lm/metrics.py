"""How well a tuned causal LM answers: the answer-token loss and perplexity of a split, and exact match against a
label set when the answers are labels."""

from __future__ import annotations

import math

import torch
from torch import nn

from sft.data.chat import ChatCollate, ChatDataset
from sft.data.loaders import eval_batches
from sft.data.samples import Samples
from sft.tasks.causal_lm.module import answer_loss


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


def _norm(answer: str) -> str:
    """An answer as labels are compared: case and surrounding punctuation ignored."""
    return answer.strip().strip(".!\"'").strip().lower()


def label_scores(answers: list[str], truth: list[str], labels: list[str]) -> dict:
    """Exact match (case and surrounding punctuation ignored) and the share of answers inside the label set."""
    norm = _norm
    known = {norm(label) for label in labels}
    exact = sum(norm(a) == norm(t) for a, t in zip(answers, truth))
    inside = sum(norm(a) in known for a in answers)
    n = max(len(answers), 1)
    return {"exact_match": round(exact / n, 4), "in_label_set": round(inside / n, 4)}


def answer_distribution(truth: list[str], after: list[str], before: list[str] | None, labels: list[str]) -> list[dict]:
    """Per label (and "(other)" for answers outside the set): how often it is the reference, how often it is
    answered after tuning (and before), and how often rightly."""
    index = {_norm(label): label for label in labels}
    named = lambda answer: index.get(_norm(answer), "(other)")  # noqa: E731
    rows = []
    for label in [*labels, "(other)"]:
        row = {"label": label, "references": sum(named(t) == label for t in truth),
               "answered": sum(named(a) == label for a in after),
               "right": sum(named(a) == label == named(t) for a, t in zip(after, truth))}
        if before is not None:
            row["answered_before"] = sum(named(b) == label for b in before)
        rows.append(row)
    return rows
