"""Evaluation and prediction of a trained model, batch by batch: metrics accumulate in torchmetrics and the worst
samples in a bounded heap, so a large evaluation set never holds all its logits in memory.

`evaluate_run` is the whole `sft eval`: calibrate on the run's validation split, evaluate, write metrics.json,
results.json and report.html into an evaluation folder.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchmetrics
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import Dataset

from sft.core.atomic import check_writable
from sft.core.calibration import N_BINS, ReliabilityBins
from sft.core.precision import autocast_for
from sft.core.rundir import RunDir
from sft.data.loaders import eval_batches
from sft.errors import UserError
from sft.tasks import load_recipe
from sft.tasks.base import check_eval_out, evaluation_target, source_of, write_evaluation
from sft.tasks.classification.calibration import calibrate_run
from sft.tasks.classification.export import load_model
from sft.tasks.classification.report import build_report, write_report

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


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, *, batch_size: int = 128,
             precision: str = "32-true", device: torch.device | str = "cpu", progress: bool = False,
             collate_fn: Callable | None = None, temperature: float = 1.0, top_losses: int = 0,
             top_k: int = 5) -> dict:
    """Metrics of `model` on `dataset` of (input, label) pairs, accumulated batch by batch.

    Accuracy, balanced accuracy, macro-F1 and per-class recall (what training logs), plus per-class precision, F1
    and support, macro precision/recall, weighted F1, top-k accuracy (k = min(top_k, num_classes)), the confusion
    matrix, the mean cross-entropy, and calibration: ECE (torchmetrics) and reliability bins of the raw
    probabilities and of those scaled by `temperature`. `top_losses`: the N samples of highest loss under the
    calibrated probabilities (index into `dataset`, label, prediction, probabilities; none by default). Inputs may
    be tensors or dicts of tensors (`collate_fn` builds batches; default: torch's)."""
    model.eval()
    k = min(top_k, num_classes)
    common = dict(task="multiclass", num_classes=num_classes, sync_on_compute=False)
    metrics = torchmetrics.MetricCollection({
        "accuracy": torchmetrics.Accuracy(**common),
        "balanced_accuracy": torchmetrics.Accuracy(**common, average="macro"),
        "macro_f1": torchmetrics.F1Score(**common, average="macro"),
        "weighted_f1": torchmetrics.F1Score(**common, average="weighted"),
        "macro_precision": torchmetrics.Precision(**common, average="macro"),
        "macro_recall": torchmetrics.Recall(**common, average="macro"),
        "top_k_accuracy": torchmetrics.Accuracy(**common, top_k=k),
        "per_class_precision": torchmetrics.Precision(**common, average="none"),
        "per_class_recall": torchmetrics.Recall(**common, average="none"),
        "per_class_f1": torchmetrics.F1Score(**common, average="none"),
        "confusion_matrix": torchmetrics.ConfusionMatrix(**common),
    }).to(device)
    ece = torchmetrics.CalibrationError(**common, n_bins=N_BINS).to(device)
    ece_scaled = torchmetrics.CalibrationError(**common, n_bins=N_BINS).to(device)
    bins, bins_scaled, worst = ReliabilityBins(), ReliabilityBins(), TopLosses(top_losses)
    loss_sum, nll_scaled, count = 0.0, 0.0, 0
    with autocast_for(precision, device):
        for x, y in eval_batches(dataset, batch_size, collate_fn, progress, "evaluating"):
            x, y = move_data_to_device(x, device), y.to(device)
            logits = model(x).float()
            scaled = logits / temperature
            losses = nn.functional.cross_entropy(scaled, y, reduction="none")
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            nll_scaled += losses.sum().item()
            probs, probs_scaled = logits.softmax(-1), scaled.softmax(-1)
            metrics.update(logits, y)
            ece.update(probs, y), ece_scaled.update(probs_scaled, y)
            bins.update(probs, y), bins_scaled.update(probs_scaled, y)
            worst.update(losses.cpu(), y.cpu(), probs_scaled.cpu(), count)
            count += len(y)
    result = {name: value.tolist() for name, value in metrics.compute().items()}
    result["support"] = [int(sum(row)) for row in result["confusion_matrix"]]
    result.update(top_k=k, loss=loss_sum / max(count, 1), samples=count, temperature=temperature,
                  nll_calibrated=nll_scaled / max(count, 1), ece=float(ece.compute()),
                  ece_calibrated=float(ece_scaled.compute()), reliability=bins.result(),
                  reliability_calibrated=bins_scaled.result(), top_losses=worst.items())
    return result


@torch.inference_mode()
def predict(model: nn.Module, inputs, classes: list[str], top_k: int = 1, precision: str = "32-true",
            temperature: float = 1.0) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) for each input of a batch; probabilities are softmax(logits / temperature), the
    run's calibrated ones when `temperature` is its fitted value."""
    model.eval()
    with autocast_for(precision):
        probs = (model(inputs).float() / temperature).softmax(-1)
    values, indices = probs.topk(min(top_k, len(classes)), dim=-1)
    return [[(classes[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), indices.tolist())]


# -- `sft eval`: a run directory in, an evaluation folder out ------------------------------------------------------

def eval_inputs(task, model: nn.Module, info, recipe, source) -> tuple:
    """(samples, dataset, collate_fn) of the labelled `source` as the run's model takes them: images through the
    run's eval transform, texts (read with the recipe's columns) tokenized by the run's own tokenizer."""
    samples = task.read_split(source, recipe, info.classes)
    check_classes(samples.classes, info.classes, source.path)
    inputs = task.run_inputs(model, info)
    return samples, inputs.eval(samples), inputs.collate


def val_samples(task, recipe):
    """The run's validation split, exactly as training drew it (same seed, limits and corrections)."""
    return task.load_splits(recipe).val


def check_classes(data: list[str], run: list[str], where) -> None:
    if list(data) != list(run):
        only_data, only_run = sorted(set(data) - set(run)), sorted(set(run) - set(data))
        detail = (f"only in the data: {only_data}; only in the run: {only_run}" if only_data or only_run
                  else f"same names in another order: data {list(data)}, run {list(run)}")
        raise UserError(f"{where}: classes differ from the run's ({detail})")


def evaluate_run(task, run_dir: str | Path, data: str | Path | None = None, out: str | Path | None = None,
                 overwrite: bool = False, progress: bool = True, *, batch_size: int = 128, top_n: int = 16,
                 per_class: int = 2) -> tuple[Path, dict]:
    """`sft eval`: fit the temperature on the run's validation split if model.json never had it fitted, evaluate
    on `data` (default: the run's test split) and write metrics.json, results.json and report.html to `out`
    (default RUN_DIR/eval, or RUN_DIR/eval-<data name> for other data). Returns the folder and the summary of
    metrics.json.

    A folder holding the evaluation of other data is refused unless `overwrite`; the same data is re-evaluated.
    Only an evaluation folder is ever replaced, never the data, the run or a folder sft did not write."""
    run, recipe, source, out = evaluation_target(run_dir, data, out)
    model, info = load_model(run.path)
    samples, dataset, collate_fn = eval_inputs(task, model, info, recipe, source)
    identity = {"source": source.model_dump(), "fingerprint": samples.fingerprint(), "samples": len(samples)}
    this = (identity["source"], identity["fingerprint"])  # the same data again (say after retraining): replaced
    check_eval_out(out, source.path, run.path, overwrite, lambda data: (data["source"], data["fingerprint"]) == this)
    if not info.extra.get("temperature_fitted"):  # fitted below and stored in model.json
        check_writable(run.path, f"`sft eval` stores the temperature it fits in {run.path / 'model.json'}; make the "
                                 f"run folder writable (chmod -R u+w {run.path}) or evaluate a writable copy of it")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    calibration = calibrate_run(run.path, model, info, lambda: val_samples(task, recipe),
                                task.run_inputs(model, info), seed=recipe.seed, device=device,
                                batch_size=batch_size, progress=progress)
    result = evaluate(model, dataset, len(info.classes), batch_size=batch_size, device=device, progress=progress,
                      collate_fn=collate_fn, temperature=calibration["temperature"], top_losses=top_n)
    for row in result["top_losses"]:
        row["id"] = samples.ids[row["index"]]
    results = {"run_dir": str(run.path.resolve()), "data": identity, "kind": samples.kind, "classes": info.classes,
               "calibration": calibration, "metrics": result,
               "class_samples": class_samples(samples.labels, len(info.classes), per_class)}
    summary = summarize(results)
    page = build_report(results, model.cpu(), info, samples, dataset, collate_fn, progress=progress)
    write_evaluation(out, results, summary, page)
    return out, summary


def rebuild_report(task, run_dir: str | Path, eval_dir: str | Path | None = None, progress: bool = True) -> Path:
    """`sft report`: re-render report.html from an evaluation folder's results.json (re-reads the evaluated data,
    which must be unchanged, and re-runs Grad-CAM)."""
    out = Path(eval_dir) if eval_dir else Path(run_dir) / "eval"
    if not (out / "results.json").exists():
        raise UserError(f"{out}: no results.json; run `sft eval {run_dir}` first")
    results = json.loads((out / "results.json").read_text())
    model, info = load_model(run_dir)
    recipe = load_recipe(RunDir(run_dir).recipe)
    source = source_of(recipe, results["data"]["source"])
    samples, dataset, collate_fn = eval_inputs(task, model, info, recipe, source)
    if samples.fingerprint() != results["data"]["fingerprint"]:
        raise UserError(f"{results['data']['source']['path']}: the data changed since it was evaluated; run "
                        f"`sft eval` again (with --overwrite)")
    write_report(out, results, model, info, samples, dataset, collate_fn, progress=progress)
    return out / "report.html"


def summarize(results: dict) -> dict:
    """metrics.json of an evaluation: overall scalars, then per-class precision/recall/F1/support."""
    m, classes = results["metrics"], results["classes"]
    keys = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1",
            "top_k_accuracy", "top_k", "loss", "nll_calibrated", "ece", "ece_calibrated", "temperature", "samples")
    summary = {key: m[key] for key in keys}
    summary["per_class"] = {c: {"precision": m["per_class_precision"][i], "recall": m["per_class_recall"][i],
                                "f1": m["per_class_f1"][i], "support": m["support"][i]}
                            for i, c in enumerate(classes)}
    return summary


def class_samples(labels: np.ndarray, num_classes: int, per_class: int, max_classes: int = 40) -> list[int]:
    """The first `per_class` samples of each of the first `max_classes` classes (the report's Grad-CAM gallery)."""
    labels = np.asarray(labels)
    return [int(i) for c in range(min(num_classes, max_classes)) for i in np.flatnonzero(labels == c)[:per_class]]
