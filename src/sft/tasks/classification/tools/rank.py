"""`sft rank`: which pretrained model to fine-tune, answered before training any of them.

Each candidate (`backbone` or `backbone@weights`) encodes a stratified sample of the recipe's training data through
the feature cache, with the recipe's own inputs (the backbone's eval transform, or its tokenizer for texts). On those
features: LogME (the default sort key), H-score, kNN and linear-probe accuracy on a held-out quarter of the sample,
and for image backbones with an ImageNet classifier, NCE and LEEP from that classifier's predictions. A candidate
that cannot be loaded is reported with the reason; the others are still ranked.

    sft rank recipe.yaml --candidates torchvision/mobilenet_v2,timm/tf_efficientnet_lite0,timm/tf_efficientnet_lite0@none
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import lightning as L
import numpy as np
import torch
from torch import nn

from sft.core.atomic import atomic_write_json
from sft.core.hardware import loader_workers, training_device
from sft.core.precision import resolve_precision, use_channels_last
from sft.core.rundir import check_replaceable, mark
from sft.data.samples import Samples, stratified_split, stratified_subset
from sft.errors import UserError
from sft.models.backbone import last_linear
from sft.models.vision import classify_imagenet_head
from sft.recipe import Recipe
from sft.tasks.classification.options import Score
from sft.tasks.classification.tools import transfer
from sft.training.prepare import split_features

SCORES = get_args(Score)  # ("logme", "hscore", "nce", "leep", "knn_acc", "probe_acc"): `--by` takes one of them
HELD_OUT = 0.25  # share of the sample held out for the kNN and linear-probe accuracies


@dataclass
class CandidateFeatures:
    """What a candidate's scores are computed from."""
    features: np.ndarray  # (N, D) float32
    source_probs: np.ndarray | None  # (N, Z) the source classifier's probabilities (ImageNet), when it has one
    weights_id: str
    note: str = ""  # why source_probs is missing, when it is


def parse_candidate(text: str, recipe: Recipe) -> tuple[str, str | None]:
    """'backbone' or 'backbone@weights'. Without @: the recipe's weights for the recipe's own backbone, else the
    default weights of the task's recipe (imagenet for images, pretrained for texts)."""
    backbone, sep, weights = text.strip().partition("@")
    if not backbone:
        raise UserError(f"candidate {text!r}: expected backbone or backbone@weights")
    if sep:
        return backbone, weights or None
    if backbone == recipe.model.backbone:
        return backbone, recipe.model.weights
    return backbone, type(recipe.model).model_fields["weights"].default


def rank_sample(task, recipe: Recipe, limit: int) -> Samples:
    """The stratified sample of the training data every candidate sees."""
    splits = task.load_splits(recipe)
    return splits.train.subset(stratified_subset(splits.train.labels, limit, recipe.seed))


def backbone_features(task, recipe: Recipe, backbone_name: str, weights: str | None,
                      samples: dict[str, Samples]) -> tuple[dict[str, torch.Tensor], str]:
    """Another backbone's features of the recipe's data, built as training builds them (images: the backbone and its
    eval transform; texts: the encoder and its tokenizer), through the cache; what `sft rank` scores and `sft audit
    --also` probes. Returns the features of each named sample set and the weights' id."""
    r = recipe.model_copy(deep=True)
    r.model.backbone, r.model.weights = backbone_name, weights
    if r.strategy.name in ("lora", "auto"):
        r.strategy.name = "linear-probe"  # the frozen pretrained features are scored, not adapters
    L.seed_everything(recipe.seed, verbose=False)  # randomly initialised candidates are reproducible
    backbone = task.build_backbone(r)
    inputs = task.build_inputs(backbone, r)
    precision = resolve_precision(r.trainer.precision, r.trainer.accelerator)
    device = training_device(r.trainer.accelerator)
    channels_last = use_channels_last(r.trainer.channels_last, backbone.module)
    features = split_features(r, backbone.name, backbone.module, SimpleNamespace(**samples), inputs, precision,
                              channels_last, device, loader_workers(r.data.num_workers, device, 1, inputs.decodes))
    return {name: features(name, inputs.eval(s)).float() for name, s in samples.items()}, backbone.weights_id


def candidate_features(task, recipe: Recipe, backbone_name: str, weights: str | None,
                       sample: Samples) -> CandidateFeatures:
    """A candidate's features of the ranking sample, and its source classifier's probabilities (images)."""
    features, weights_id = backbone_features(task, recipe, backbone_name, weights, {"rank": sample})
    x = features["rank"]
    if task.column == "text":
        return CandidateFeatures(x.numpy(), None, weights_id, "no source classifier for text encoders")
    probs, note = _source_probs(backbone_name, weights, x)
    return CandidateFeatures(x.numpy(), probs, weights_id, note)


def _source_probs(name: str, weights: str | None, features: torch.Tensor) -> tuple[np.ndarray | None, str]:
    """The backbone's own (ImageNet) classifier applied to its pooled features: what NCE and LEEP need."""
    try:
        full = classify_imagenet_head(name, weights)
    except UserError as e:
        return None, f"no source classifier: {e}"
    if hasattr(full, "get_classifier"):
        head = full.get_classifier()
    else:
        head = next((getattr(full, a) for a in ("classifier", "fc", "heads", "head")
                     if isinstance(getattr(full, a, None), nn.Module)), None)
        head = last_linear(head) if head is not None else None
    if not isinstance(head, nn.Linear) or head.in_features != features.shape[1]:
        return None, "the source classifier does not act on the pooled features"
    with torch.inference_mode():
        return torch.softmax(head.float()(features.cpu()), dim=1).numpy(), ""


def score(cf: CandidateFeatures, labels: np.ndarray, seed: int) -> dict:
    """Every score of one candidate; None where it cannot be computed."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = cf.features, labels
    fit, held = stratified_split(y, HELD_OUT, seed)
    out = {"logme": transfer.logme(x, y), "hscore": transfer.hscore(x, y)}
    out["nce"] = transfer.nce(cf.source_probs, y) if cf.source_probs is not None else None
    out["leep"] = transfer.leep(cf.source_probs, y) if cf.source_probs is not None else None
    if len(held) and len(np.unique(y[fit])) > 1:
        out["knn_acc"] = transfer.knn_accuracy(x[fit], y[fit], x[held], y[held])
        # a ridge probe: closed form, its penalty chosen by leave-one-out; seconds where logistic takes minutes
        probe = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-1, 4, 11)))
        out["probe_acc"] = float(probe.fit(x[fit], y[fit]).score(x[held], y[held]))
    else:
        out["knn_acc"] = out["probe_acc"] = None
    return {k: (None if v is None or not math.isfinite(v) else round(float(v), 6)) for k, v in out.items()}


def rank_backbones(task, recipe: Recipe, candidates: list[str], out_dir: str | Path | None = None, *, by: str = "logme",
                   limit: int = 2000, overwrite: bool = False, progress=None) -> dict:
    """Score every candidate on a stratified sample of `limit` training samples; write rank.json to out_dir
    (default <run_dir>-rank). Returns {"by", "samples", "classes", "ranked": [...], "failed": [...]}."""
    if by not in SCORES:
        raise UserError(f"--by {by}: expected one of {', '.join(SCORES)}")
    if not candidates:
        raise UserError("--candidates: give at least one backbone (backbone or backbone@weights, comma-separated)")
    if limit < 4:
        raise UserError(f"--limit {limit}: too few samples to score anything (at least a few per class)")
    out = Path(out_dir) if out_dir is not None else Path(f"{recipe.run_dir}-rank")
    check_replaceable(out, "rank", overwrite=overwrite)
    sample = rank_sample(task, recipe, limit)
    ranked, failed = [], []
    for text in candidates:
        started = time.perf_counter()
        try:
            backbone, weights = parse_candidate(text, recipe)
            cf = candidate_features(task, recipe, backbone, weights, sample)
        except UserError as e:
            failed.append({"candidate": text, "error": str(e)})
            if progress:
                progress(text, None)
            continue
        scale = float(cf.features.std(0).mean())
        row = {"candidate": text, "backbone": backbone, "weights": weights, "weights_id": cf.weights_id,
               "features": int(cf.features.shape[1]), "feature_std": float(f"{scale:.3g}"),
               **score(cf, sample.labels, recipe.seed)}
        notes = [cf.note] if cf.note else []
        if not 1e-3 < scale < 1e3:  # the scores are scale-invariant; sft's head, trained on raw features, is not
            notes.append(f"features have a scale of {scale:.1e}: a head on these raw features (linear probe, "
                         f"first stage of two-stage) will train poorly although the scores do not show it")
        if notes:
            row["note"] = "; ".join(notes)
        row["seconds"] = round(time.perf_counter() - started, 2)
        ranked.append(row)
        if progress:
            progress(text, row)
    if not ranked:
        reasons = "\n".join(f"  {f['candidate']}: {f['error']}" for f in failed)
        raise UserError(f"no candidate could be loaded:\n{reasons}")
    ranked.sort(key=lambda row: (row[by] is None, -(row[by] or 0.0)))
    for i, row in enumerate(ranked):
        row["rank"] = i + 1
    result = {"by": by, "samples": len(sample), "held_out": HELD_OUT, "classes": list(sample.classes),
              "task": recipe.task, "ranked": ranked, "failed": failed}
    atomic_write_json(out / "rank.json", result)
    mark(out, "rank")
    result["out"] = str(out)
    return result
