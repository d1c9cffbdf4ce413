"""Classification's scores of a split, counted batch by batch (`Scores`, the skeleton's Scorer): metrics accumulate in
torchmetrics and the worst samples in a bounded heap, so a large evaluation set never holds all its logits in memory.
Training's final metrics and `sft eval` score with it; `summarize` turns an evaluation into its metrics.json."""

from __future__ import annotations

import heapq

import torch
import torchmetrics
from torch import nn

from sft.core.calibration import N_BINS, ReliabilityBins
from sft.tasks.classification.conformal import SetCounts


class TopLosses:
    """The `n` samples of highest loss seen so far, in a min-heap of size n: O(n) memory for any data size."""

    def __init__(self, n: int):
        self.n, self.heap = n, []

    def update(self, losses: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, start: int) -> None:
        """One batch: per-sample `losses`, given `labels`, softmax `probs` (B, C); `start` is the batch's first
        dataset index."""
        if self.n <= 0:
            return
        k = min(self.n, len(losses))
        worst = losses.topk(k).indices  # only a batch's own top n can enter the heap
        pred_prob, pred = probs.max(-1)
        for i in worst.tolist():
            item = (float(losses[i]), -(start + i), int(labels[i]), int(pred[i]), float(pred_prob[i]),
                    float(probs[i, labels[i]]))
            if len(self.heap) < self.n:
                heapq.heappush(self.heap, item)
            elif item > self.heap[0]:
                heapq.heapreplace(self.heap, item)

    def items(self) -> list[dict]:
        """Highest loss first (ties: lower index first)."""
        keys = ("loss", "index", "label", "pred", "pred_prob", "label_prob")
        rows = [dict(zip(keys, item)) for item in sorted(self.heap, reverse=True)]
        for row in rows:
            row["index"] = -row["index"]
        return rows


class Scores:
    """The Scorer of a classifier's logits (`sft.tasks.base.score_batches` runs it over a split).

    Accuracy, balanced accuracy, macro-F1 and per-class recall (what training logs), plus per-class precision, F1
    and support, macro precision/recall, weighted F1, top-k accuracy (k = min(top_k, num_classes)), the confusion
    matrix, the mean cross-entropy, and calibration: ECE (torchmetrics) and reliability bins of the raw
    probabilities and of those scaled by `temperature`. `top_losses`: the N samples of highest loss under the
    calibrated probabilities (index into the split, label, prediction, probabilities; none by default). `sets`:
    the coverage and sizes of prediction sets on the calibrated probabilities. The sums stay on the device of the
    outputs."""

    def __init__(self, num_classes: int, *, temperature: float = 1.0, top_losses: int = 0, top_k: int = 5,
                 sets: SetCounts | None = None):
        self.k, self.temperature, self.sets = min(top_k, num_classes), temperature, sets
        common = dict(task="multiclass", num_classes=num_classes, sync_on_compute=False)
        self.metrics = torchmetrics.MetricCollection({
            "accuracy": torchmetrics.Accuracy(**common),
            "balanced_accuracy": torchmetrics.Accuracy(**common, average="macro"),
            "macro_f1": torchmetrics.F1Score(**common, average="macro"),
            "weighted_f1": torchmetrics.F1Score(**common, average="weighted"),
            "macro_precision": torchmetrics.Precision(**common, average="macro"),
            "macro_recall": torchmetrics.Recall(**common, average="macro"),
            "top_k_accuracy": torchmetrics.Accuracy(**common, top_k=self.k),
            "per_class_precision": torchmetrics.Precision(**common, average="none"),
            "per_class_recall": torchmetrics.Recall(**common, average="none"),
            "per_class_f1": torchmetrics.F1Score(**common, average="none"),
            "confusion_matrix": torchmetrics.ConfusionMatrix(**common),
        })
        self.ece = torchmetrics.CalibrationError(**common, n_bins=N_BINS)
        self.ece_scaled = torchmetrics.CalibrationError(**common, n_bins=N_BINS)
        self.bins, self.bins_scaled, self.worst = ReliabilityBins(), ReliabilityBins(), TopLosses(top_losses)
        self.loss_sum, self.nll_scaled, self.count, self.device = 0.0, 0.0, 0, torch.device("cpu")

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, first: int) -> None:
        logits, y = outputs.float(), targets
        if logits.device != self.device:
            self.device = logits.device
            for metric in (self.metrics, self.ece, self.ece_scaled):
                metric.to(self.device)
        scaled = logits / self.temperature
        losses = nn.functional.cross_entropy(scaled, y, reduction="none")
        self.loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        self.nll_scaled += losses.sum().item()
        probs, probs_scaled = logits.softmax(-1), scaled.softmax(-1)
        self.metrics.update(logits, y)
        self.ece.update(probs, y), self.ece_scaled.update(probs_scaled, y)
        self.bins.update(probs, y), self.bins_scaled.update(probs_scaled, y)
        self.worst.update(losses.cpu(), y.cpu(), probs_scaled.cpu(), first)
        if self.sets is not None:
            self.sets.update(probs_scaled, y)
        self.count += len(y)

    def result(self) -> dict:
        result = {name: value.tolist() for name, value in self.metrics.compute().items()}
        result["support"] = [int(sum(row)) for row in result["confusion_matrix"]]
        count = max(self.count, 1)
        result.update(top_k=self.k, loss=self.loss_sum / count, samples=self.count, temperature=self.temperature,
                      nll_calibrated=self.nll_scaled / count, ece=float(self.ece.compute()),
                      ece_calibrated=float(self.ece_scaled.compute()), reliability=self.bins.result(),
                      reliability_calibrated=self.bins_scaled.result(), top_losses=self.worst.items())
        if self.sets is not None:
            result["sets"] = self.sets.result()
        return result


def summarize(results: dict) -> dict:
    """metrics.json of an evaluation: overall scalars, then per-class precision/recall/F1/support."""
    m, classes = results["metrics"], results["classes"]
    keys = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1",
            "top_k_accuracy", "top_k", "loss", "nll_calibrated", "ece", "ece_calibrated", "temperature", "samples")
    summary = {key: m[key] for key in keys} | {"tta": results.get("tta", "none")}
    if "sets" in m:  # evaluations before prediction sets have none
        summary.update({key: m["sets"][key] for key in ("coverage_target", "set_coverage", "mean_set_size")})
    summary["per_class"] = {c: {"precision": m["per_class_precision"][i], "recall": m["per_class_recall"][i],
                                "f1": m["per_class_f1"][i], "support": m["support"][i]}
                            for i, c in enumerate(classes)}
    return summary
