"""Evaluation and prediction of a trained model, batch by batch: metrics accumulate in torchmetrics, so a large
evaluation set never holds all its logits in memory."""

from __future__ import annotations

import contextlib

import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, Dataset


def autocast_for(precision: str, device: torch.device | str = "cpu"):
    device = torch.device(device)
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, *, batch_size: int = 128,
             precision: str = "32-true", device: torch.device | str = "cpu", progress: bool = False) -> dict:
    """Accuracy, metrics that do not hide minority classes (balanced accuracy, macro-F1, per-class recall) and mean
    cross-entropy of `model` on `dataset` of (input, label) pairs."""
    model.eval()
    common = dict(task="multiclass", num_classes=num_classes, sync_on_compute=False)
    metrics = torchmetrics.MetricCollection({
        "accuracy": torchmetrics.Accuracy(**common),
        "balanced_accuracy": torchmetrics.Accuracy(**common, average="macro"),
        "macro_f1": torchmetrics.F1Score(**common, average="macro"),
        "per_class_recall": torchmetrics.Recall(**common, average="none"),
    }).to(device)
    loss_sum, count = 0.0, 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    batches = loader
    if progress:
        from rich.progress import track
        batches = track(loader, description="evaluating", transient=True)
    with autocast_for(precision, device):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            count += len(y)
            metrics.update(logits, y)
    result = {name: value.tolist() for name, value in metrics.compute().items()}
    return {**result, "loss": loss_sum / max(count, 1), "samples": count}


@torch.inference_mode()
def predict(model: nn.Module, inputs: torch.Tensor, classes: list[str], top_k: int = 1,
            precision: str = "32-true") -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) for each input of a batch."""
    model.eval()
    with autocast_for(precision):
        probs = model(inputs).float().softmax(-1)
    values, indices = probs.topk(min(top_k, len(classes)), dim=-1)
    return [[(classes[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), indices.tolist())]
