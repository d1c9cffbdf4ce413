"""`sft export RUN --format onnx` for detection, and the export back for `sft predict/serve --engine onnx`.

    RUN/export/            (or --out)
      model.onnx           input (B, 3, S, S) float in 0..1 (the run's eval transform applied, not normalised);
                           outputs boxes (B, N, 4) xyxy in input pixels, scores (B, N), labels (B, N) int64 0-based,
                           best first; rows past an image's detections have score 0 and label -1. B is dynamic, N is
                           min(detections_per_image, candidates), S is the run's image size
      model.json           the run's model.json (classes, image size, mean/std, detector, thresholds) + the graph's
                           names and axes, the weights' id and model.onnx's sha256 (both checked before loading)
      parity.json          onnxruntime against PyTorch on the run's own validation, then test images, batch 1 and N

Post-processing is inside the graph: users run the file in other runtimes, where a box decoder, NMS and top-k
written again from a description would be the next place for answers to drift. torchvision's detectors cannot be
exported as they are with a dynamic batch (vision 8937): their post-processing loops over the images, so tracing
fixes the batch size. `DetectionGraph` runs the same layers (normalisation, backbone, FPN, heads) on the whole batch
and replaces each detector's per-image loop with batched tensor ops that do the same: candidates per level (or per
class: SSD) over the score threshold, top-k, the box decoding, clipping, one NMS per image and class, and the best
`detections_per_image`. The NMS is ONNX's NonMaxSuppression, which takes a batch of images and a score per class
(no coordinate-offset trick, whose large offsets lose float32 precision when batch and classes multiply); PyTorch
runs torchvision's nms for it. The anchors depend only on S, so they are constants of the graph. Faster R-CNN's
RoIAlign runs on every level and the level of each box is picked after (static shapes, no per-level scatter).
The TorchScript-based exporter converts it, as for the other tasks (the torch.export-based one needs onnxscript).

Nothing is written unless onnxruntime's answers match PyTorch's (`compare`): every PyTorch box has an ONNX box of the
same class with IoU >= MIN_IOU and a score within SCORE_TOL, and the mAP50 differs by at most MAP50_TOL. A PyTorch box
within SCORE_TOL of where it would have been cut (the score threshold, or the last score of a full image) may fall
either side, and is counted apart (`borderline`) rather than required.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou, roi_align

from sft.core.rundir import RunDir
from sft.data.loaders import eval_batches
from sft.errors import UserError
from sft.models.export import (check_export, check_export_dir, default_folder, file_id, parity_parts, session,
                               to_onnx, write_export_dir)
from sft.tasks import load_recipe
from sft.tasks.detection.data import BoxDataset, box_transforms, collate
from sft.tasks.detection.metrics import mean_ap

EXPORTABLE = ("fcos", "retinanet", "ssdlite", "fasterrcnn")
OUTPUTS = ["boxes", "scores", "labels"]
PARITY_IMAGES = 64
PARITY_BATCH = 8
MIN_IOU = 0.99
SCORE_TOL = 1e-3
MAP50_TOL = 0.005


class _NMS(torch.autograd.Function):
    """Per image and class NMS: boxes (B, K, 4), scores (B, C, K) -> (M, 3) int64 rows [image, class, box], as ONNX's
    NonMaxSuppression gives them; a box takes part in a class where its score is over `threshold`."""

    @staticmethod
    def forward(ctx, boxes, scores, iou: float, threshold: float):
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                idx = torch.where(scores[b, c] > threshold)[0]
                keep = idx[torchvision.ops.nms(boxes[b, idx], scores[b, c, idx], iou)]
                rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], 1))
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, iou: float, threshold: float):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([sys.maxsize], dtype=torch.long)),
                    g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float)),
                    g.op("Constant", value_t=torch.tensor([threshold], dtype=torch.float)))


def nms_mask(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, classes: int,
             iou: float) -> torch.Tensor:
    """(B, K) bool: which valid candidates survive NMS among the valid ones of their image and label."""
    per_class = torch.arange(classes, device=labels.device)[None, :, None]
    scored = torch.where((labels[:, None, :] == per_class) & valid[:, None, :], scores[:, None, :],
                         torch.full_like(scores[:, None, :], -1.0))  # (B, C, K); -1: not in this class
    kept = _NMS.apply(boxes, scored, iou, -0.5)
    mask = torch.zeros_like(scores)
    mask[kept[:, 0], kept[:, 2]] = 1.0
    return mask > 0


def best(scores: torch.Tensor, keep: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (B, n), kept (B, n)) of the `count` best kept candidates per image, best first; n = min(count, K)."""
    n = min(count, scores.shape[1])
    top, idx = torch.where(keep, scores, torch.full_like(scores, -1.0)).topk(n, dim=1)
    return idx, top > -0.5


def pick(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[b, idx[b]] for (B, K) or (B, K, D) t."""
    if t.dim() == 2:
        return t.gather(1, idx)
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


def decode(coder, codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """torchvision's box decoding on (..., 4) tensors of any leading shape."""
    if isinstance(coder, BoxLinearCoder):
        return coder.decode(codes, anchors)
    widths, heights = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ctr_x, ctr_y = anchors[..., 0] + 0.5 * widths, anchors[..., 1] + 0.5 * heights
    wx, wy, ww, wh = coder.weights
    dw = torch.clamp(codes[..., 2] / ww, max=coder.bbox_xform_clip)
    dh = torch.clamp(codes[..., 3] / wh, max=coder.bbox_xform_clip)
    x, y = codes[..., 0] / wx * widths + ctr_x, codes[..., 1] / wy * heights + ctr_y
    half_w, half_h = 0.5 * (torch.exp(dw) * widths), 0.5 * (torch.exp(dh) * heights)
    return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=-1)


def kind_of(detector: nn.Module) -> str:
    for kind, cls in (("fcos", FCOS), ("retinanet", RetinaNet), ("ssdlite", SSD), ("fasterrcnn", FasterRCNN)):
        if isinstance(detector, cls):
            return kind
    raise UserError(f"{type(detector).__name__}: not a detector sft exports (it exports {', '.join(EXPORTABLE)})")


class DetectionGraph(nn.Module):
    """A run's TrainedDetector as one batched graph (module docstring): images (B, 3, S, S) in 0..1 -> boxes (B, N, 4),
    scores (B, N), labels (B, N), rows past an image's detections at score 0, label -1 and box 0."""

    def __init__(self, model: nn.Module, size: int, classes: int):
        super().__init__()
        self.model = model.eval()  # registers the trunk and the detector's parameters
        detector = self.detector = model.head
        self.kind, self.size, self.classes = kind_of(detector), size, classes + 1  # + torchvision's background
        t = detector.transform
        self.register_buffer("mean", torch.tensor(t.image_mean)[:, None, None])
        self.register_buffer("std", torch.tensor(t.image_std)[:, None, None])
        self.padded = -(-size // t.size_divisible) * t.size_divisible  # torchvision pads the batch to a multiple
        with torch.no_grad():
            x = torch.zeros(1, 3, self.padded, self.padded)
            named = detector.backbone(x)
            features = list(named.values())
            images = ImageList(x, [(size, size)])
            generator = detector.rpn.anchor_generator if self.kind == "fasterrcnn" else detector.anchor_generator
            self.register_buffer("anchors", generator(images, features)[0])
            if self.kind == "fasterrcnn":  # the pooler's levels, as its first call sets them
                pooler = detector.roi_heads.box_roi_pool
                pooler.scales, pooler.map_levels = torchvision.ops.poolers._setup_scales(
                    [named[n] for n in pooler.featmap_names], [(size, size)], pooler.canonical_scale,
                    pooler.canonical_level)
        cells = [f.shape[-2] * f.shape[-1] for f in features]
        per_cell = len(self.anchors) // sum(cells)
        self.per_level = [c * per_cell for c in cells]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (x - self.mean) / self.std
        if self.padded != self.size:
            x = F.pad(x, (0, self.padded - self.size, 0, self.padded - self.size))
        features = self.detector.backbone(x)
        if self.kind == "fasterrcnn":
            return self.two_stage(features)
        out = self.detector.head(list(features.values()))
        if self.kind == "ssdlite":
            boxes, scores, labels, valid = self.per_class(out)
        else:
            boxes, scores, labels, valid = self.per_level_candidates(out)
        return self.finish(boxes, scores, labels, valid, background=self.kind != "ssdlite")

    def clip(self, boxes: torch.Tensor) -> torch.Tensor:
        return boxes.clamp(min=0, max=self.size)

    def per_level_candidates(self, out: dict) -> tuple:
        """FCOS and RetinaNet: per level, the best `topk_candidates` (anchor, class) pairs over the score threshold."""
        d = self.detector
        logits = out["cls_logits"].split(self.per_level, dim=1)
        regression = out["bbox_regression"].split(self.per_level, dim=1)
        centres = out["bbox_ctrness"].split(self.per_level, dim=1) if self.kind == "fcos" else [None] * len(logits)
        anchors = self.anchors.split(self.per_level)
        found = []
        for logit, reg, centre, anchor in zip(logits, regression, centres, anchors):
            classes = logit.shape[-1]
            score = torch.sigmoid(logit)
            if centre is not None:
                score = torch.sqrt(score * torch.sigmoid(centre))
            score = score.flatten(1)
            over = score > d.score_thresh
            top, idx = torch.where(over, score, torch.full_like(score, -1.0)).topk(
                min(d.topk_candidates, score.shape[1]), dim=1)
            anchor_idx = torch.div(idx, classes, rounding_mode="floor")
            boxes = self.clip(decode(d.box_coder, pick(reg, anchor_idx), anchor[anchor_idx]))
            found.append((boxes, top, idx % classes, pick(over, idx)))
        return tuple(torch.cat(parts, 1) for parts in zip(*found))

    def per_class(self, out: dict) -> tuple:
        """SSD: per class but the background, the best `topk_candidates` anchors over the score threshold."""
        d = self.detector
        boxes = self.clip(decode(d.box_coder, out["bbox_regression"], self.anchors))  # (B, A, 4)
        score = F.softmax(out["cls_logits"], dim=-1)[..., 1:].transpose(1, 2)  # (B, C-1, A)
        over = score > d.score_thresh
        top, idx = torch.where(over, score, torch.full_like(score, -1.0)).topk(
            min(d.topk_candidates, score.shape[2]), dim=2)  # (B, C-1, k)
        labels = torch.arange(1, score.shape[1] + 1, device=idx.device)[None, :, None].expand_as(idx)
        return pick(boxes, idx.flatten(1)), top.flatten(1), labels.flatten(1), over.gather(2, idx).flatten(1)

    def two_stage(self, features: dict) -> tuple:
        """Faster R-CNN: the RPN's proposals (per level top-n, NMS per level, the best post_nms_top_n), RoIAlign on
        them, the box head, then per (proposal, class but the background) candidates."""
        rpn, heads = self.detector.rpn, self.detector.roi_heads
        maps = list(features.values())
        objectness, deltas = rpn.head(maps)
        objectness, deltas = torchvision.models.detection.rpn.concat_box_prediction_layers(objectness, deltas)
        batch = maps[0].shape[0]
        objectness = objectness.reshape(batch, -1)
        proposals = decode(rpn.box_coder, deltas.reshape(batch, -1, 4), self.anchors[None])
        starts = np.cumsum([0] + self.per_level[:-1])
        top_n, levels = [], []
        for level, (start, n) in enumerate(zip(starts, self.per_level)):
            k = min(rpn.pre_nms_top_n(), n)
            top_n.append(objectness[:, start:start + n].topk(k, dim=1)[1] + int(start))
            levels.append(torch.full((k,), level, dtype=torch.long))
        idx = torch.cat(top_n, 1)
        levels = torch.cat(levels).to(idx.device)[None].expand_as(idx)
        scores, boxes = torch.sigmoid(pick(objectness, idx)), self.clip(pick(proposals, idx))
        valid = small_kept(boxes, rpn.min_size) & (scores >= rpn.score_thresh)
        keep = nms_mask(boxes, scores, levels, valid, len(self.per_level), rpn.nms_thresh)
        chosen, real = best(scores, keep, rpn.post_nms_top_n())
        proposals = pick(boxes, chosen)  # (B, P, 4)
        pooled = self.pool(features, proposals)
        class_logits, regression = heads.box_predictor(heads.box_head(pooled))
        classes = class_logits.shape[-1]
        count = proposals.shape[1]
        regression = regression.reshape(batch, count, classes, 4)[:, :, 1:]
        boxes = self.clip(decode(heads.box_coder, regression, proposals[:, :, None]))  # (B, P, C-1, 4)
        scores = F.softmax(class_logits, -1).reshape(batch, count, classes)[:, :, 1:]
        labels = torch.arange(1, classes, device=scores.device)[None, None].expand_as(scores)
        valid = (scores > heads.score_thresh) & real[:, :, None]
        boxes, scores, labels, valid = boxes.flatten(1, 2), scores.flatten(1), labels.flatten(1), valid.flatten(1)
        valid = valid & small_kept(boxes, 1e-2)
        return self.finish(boxes, scores, labels, valid, background=False, iou=heads.nms_thresh,
                           count=heads.detections_per_img)

    def pool(self, features: dict, proposals: torch.Tensor) -> torch.Tensor:
        """MultiScaleRoIAlign on (B, P, 4) proposals: every level pooled, each box's level taken after."""
        pooler = self.detector.roi_heads.box_roi_pool
        maps = [features[name] for name in pooler.featmap_names]
        batch, count = proposals.shape[:2]
        flat = proposals.reshape(-1, 4)
        image = torch.arange(batch, device=flat.device, dtype=flat.dtype)[:, None].expand(batch, count).reshape(-1, 1)
        rois = torch.cat([image, flat], 1)
        pooled = torch.stack([roi_align(m, rois, output_size=pooler.output_size, spatial_scale=s,
                                        sampling_ratio=pooler.sampling_ratio) for m, s in zip(maps, pooler.scales)])
        if len(maps) == 1:
            return pooled[0]
        level = pooler.map_levels([flat])  # (B*P,)
        return pooled[level, torch.arange(flat.shape[0], device=flat.device)]

    def finish(self, boxes, scores, labels, valid, *, background: bool, iou: float | None = None,
               count: int | None = None) -> tuple:
        """NMS per image and class, the best `count`, 0-based classes; rows past the detections zeroed."""
        d = self.detector
        iou = d.nms_thresh if iou is None else iou
        count = d.detections_per_img if count is None else count
        keep = nms_mask(boxes, scores, labels, valid, self.classes, iou)
        idx, kept = best(scores, keep, count)
        labels = pick(labels, idx)
        kept = kept & (labels > 0) if background else kept  # torchvision keeps the background class's boxes in
        # its top-k; from_detector drops them after
        boxes, scores = pick(boxes, idx), pick(scores, idx)
        return (torch.where(kept[..., None], boxes, torch.zeros_like(boxes)),
                torch.where(kept, scores, torch.zeros_like(scores)),
                torch.where(kept, labels - 1, torch.full_like(labels, -1)))


def small_kept(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """torchvision's remove_small_boxes as a mask."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


class OnnxDetector(nn.Module):
    """The export through onnxruntime behind TrainedDetector's call: (B, 3, S, S) float -> per image a dict of boxes
    (xyxy, input pixels), scores, labels (0-based). No parameters, so eval()/to() are no-ops that still work."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.session = session(path)
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> list[dict]:
        boxes, scores, labels = self.session.run(OUTPUTS, {self.input: x.detach().float().contiguous().cpu().numpy()})
        found = []
        for b, s, c in zip(boxes, scores, labels):
            real = c >= 0
            found.append({"boxes": torch.from_numpy(b[real]).float(), "scores": torch.from_numpy(s[real]).float(),
                          "labels": torch.from_numpy(c[real]).long()})
        return found


def load_onnx(run_dir: str | Path) -> OnnxDetector:
    """The run's ONNX export through onnxruntime; refused when its model.onnx is not the file the export
    wrote or the run's weights changed since."""
    folder = default_folder(run_dir)
    check_export(folder, Path(run_dir) / "model.safetensors", run_dir)
    return OnnxDetector(folder / "model.onnx")


def iou_or_same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """box_iou, where two boxes of no area (an untrained FCOS gives many) have none: 1 for the same box within
    0.01 px, else 0."""
    iou = box_iou(a, b)
    same = ((a[:, None] - b[None]).abs().amax(-1) <= 0.01).to(iou.dtype)
    return torch.where(torch.isnan(iou), same, iou)


def match_image(torch_found: dict, onnx_found: dict, threshold: float, count: int) -> list[tuple[float, float]]:
    """Per PyTorch box that must be found (not borderline): (best IoU with an ONNX box of its class, |Δscore| with
    that box); a borderline one gives (nan, nan)."""
    boxes, scores, labels = torch_found["boxes"], torch_found["scores"], torch_found["labels"]
    cut = threshold if len(scores) < count else max(threshold, float(scores.min()))
    rows = []
    overlaps = iou_or_same(boxes, onnx_found["boxes"]) if len(boxes) and len(onnx_found["boxes"]) else None
    for i in range(len(boxes)):
        if float(scores[i]) < cut + SCORE_TOL:
            rows.append((float("nan"), float("nan")))
            continue
        same = onnx_found["labels"] == labels[i]
        if overlaps is None or not bool(same.any()):
            rows.append((0.0, float(scores[i])))
            continue
        iou = torch.where(same, overlaps[i], torch.full_like(overlaps[i], -1.0))
        j = int(iou.argmax())
        rows.append((float(iou[j]), abs(float(scores[i]) - float(onnx_found["scores"][j]))))
    return rows


@torch.inference_mode()
def compare(reference: nn.Module, exported: nn.Module, parts: list, sizes: tuple[int, ...], threshold: float,
            count: int) -> dict:
    """The exported detector against the PyTorch one on the same images, at each batch size: the share of PyTorch
    boxes found (same class, IoU >= MIN_IOU, score within SCORE_TOL), the worst IoU and score difference, and both
    mAP50s on the images' own boxes. `passed` when every size is within all three."""
    reference.eval()
    result: dict = {"min_iou": MIN_IOU, "score_tolerance": SCORE_TOL, "map50_tolerance": MAP50_TOL,
                    "batch_sizes": {}}
    for size in sizes:
        rows, samples, maps = [], 0, (mean_ap(), mean_ap())
        for part in parts:
            for x, targets in eval_batches(part, size, collate, False, ""):
                mine, theirs = reference(x), exported(x)
                for a, b in zip(mine, theirs):
                    rows += match_image(a, b, threshold, count)
                maps[0].update(mine, targets), maps[1].update(theirs, targets)
                samples += len(x)
        checked = [(iou, diff) for iou, diff in rows if iou == iou]
        found = sum(iou >= MIN_IOU and diff <= SCORE_TOL for iou, diff in checked)
        torch_map, onnx_map = (float(m.compute()["map_50"]) for m in maps)
        result["batch_sizes"][str(size)] = {
            "boxes": len(checked), "matched": found, "borderline": len(rows) - len(checked),
            "matched_share": found / len(checked) if checked else 1.0,
            "worst_iou": min((iou for iou, _ in checked), default=1.0),
            "worst_score_diff": max((diff for _, diff in checked), default=0.0),
            "map50_torch": torch_map, "map50_onnx": onnx_map, "map50_diff": abs(torch_map - onnx_map),
            "samples": samples}
    per = list(result["batch_sizes"].values())
    result.update({"matched_share": min(r["matched_share"] for r in per),
                   "worst_iou": min(r["worst_iou"] for r in per),
                   "worst_score_diff": max(r["worst_score_diff"] for r in per),
                   "map50_diff": max(r["map50_diff"] for r in per),
                   "map50_torch": per[-1]["map50_torch"], "map50_onnx": per[-1]["map50_onnx"],
                   "boxes": sum(r["boxes"] for r in per), "borderline": sum(r["borderline"] for r in per),
                   "samples": per[0]["samples"]})
    result["passed"] = result["matched_share"] == 1.0 and result["map50_diff"] <= MAP50_TOL
    result["figures"] = {"passed": result["passed"],
                         "boxes matched": f"{result['matched_share']:.2%} of {result['boxes']}",
                         "worst IoU": f"{result['worst_iou']:.5f}",
                         "worst |Δscore|": f"{result['worst_score_diff']:.2e}",
                         "mAP50 torch / onnx": f"{result['map50_torch']:.4f} / {result['map50_onnx']:.4f}",
                         "samples": result["samples"]}
    return result


def failure(result: dict) -> str:
    """How far a failed check missed, for the user."""
    return (f"the exported detector differs from the PyTorch one: {result['matched_share']:.2%} of "
            f"{result['boxes']} PyTorch boxes found (needed all: same class, IoU >= {MIN_IOU}, score within "
            f"{SCORE_TOL:g}; worst IoU {result['worst_iou']:.4f}, worst |Δscore| {result['worst_score_diff']:.3g}), "
            f"mAP50 {result['map50_torch']:.4f} against {result['map50_onnx']:.4f} (|Δ| {result['map50_diff']:.4f}, "
            f"tolerance {MAP50_TOL})")


def export_onnx(task, run_dir: str | Path, out: str | Path | None, *, force: bool,
                overwrite: bool) -> tuple[Path, dict]:
    """Convert the run's detector (`task`'s run_info and load_run) into one batched graph, check it against the
    PyTorch model on up to PARITY_IMAGES images of the run's validation, then test split, at batch 1 and
    PARITY_BATCH, and write the export folder."""
    run = RunDir(run_dir)
    out = Path(out) if out else default_folder(run.path)
    check_export_dir(out, run.path, overwrite)  # before loading the model: a refused rerun costs nothing
    info = task.run_info(run.path)
    if info.detector not in EXPORTABLE:
        raise UserError(f"model.detector {info.detector}: no ONNX export (sft exports {', '.join(EXPORTABLE)})")
    model = task.load_run(run.path, info)
    eval_tf = box_transforms(info.image_size, "none")[1]
    parts = [BoxDataset(part, eval_tf) for part in
             parity_parts(lambda: task.load_splits(load_recipe(run.recipe)), PARITY_IMAGES, "images", PARITY_IMAGES)
             if len(part)]
    if not parts:
        raise UserError(f"{run.path}: the parity check needs images, and the run's validation and test splits hold "
                        f"none")
    graph = DetectionGraph(model, info.image_size, len(info.classes))
    example = next(iter(eval_batches(parts[0], 2, collate, False, "")))[0]
    example = torch.cat([example, example])[:2]  # traced at 2 even from one image: a size-1 axis can be fixed
    dynamic = {"input": {0: "batch"}} | {name: {0: "batch"} for name in OUTPUTS}
    meta = asdict(info) | {"weights_id": file_id(run.path / "model.safetensors"), "run_dir": str(run.path.resolve())}
    result: dict = {}

    def write(folder: Path) -> None:
        to_onnx(graph, (example,), folder / "model.onnx", ["input"], OUTPUTS, dynamic)
        axes = {name: {str(a): n for a, n in v.items()} for name, v in dynamic.items()}
        (folder / "model.json").write_text(json.dumps(meta | {
            "format": "onnx", "inputs": ["input"], "outputs": OUTPUTS, "dynamic_axes": axes,
            "input_range": "0..1 (normalised inside the graph)",
            "detections": "boxes xyxy in input pixels, best first; rows with label -1 (score 0) are padding",
            "onnx_id": file_id(folder / "model.onnx")}, indent=2) + "\n")
        result.update(compare(model, OnnxDetector(folder / "model.onnx"), parts, (1, PARITY_BATCH),
                              info.score_threshold, info.detections_per_image))
        (folder / "parity.json").write_text(json.dumps(result, indent=2) + "\n")
        if not result["passed"] and not force:
            raise UserError(f"{failure(result)}; nothing written (pass --force to write it anyway)")

    write_export_dir(out, write, format="onnx", task="detection")
    return out, result
