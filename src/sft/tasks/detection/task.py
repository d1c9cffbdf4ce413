"""Object detection behind the Task protocol: COCO or YOLO boxes, an ImageNet backbone in feature-map mode with an
FPN and a torchvision detector, val_map50 monitored, and a finished run that evaluates (COCO mAP, per-class AP,
precision-recall curves, class confusions at IoU 0.5, the worst images drawn) and predicts boxes.

The feature cache is not used (as for segmentation): a frozen backbone's maps are large, and the box-aware crops and
flips change them every epoch. When the validation mAP50 stays near 0, the run says what it checked in the data and
what looks wrong (sft.tasks.detection.diagnosis), in the log and in metrics.json; the checks that need no model (no
box at all, boxes normalised where pixels are wanted) run when the splits are read, before any training.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torchvision.utils import draw_bounding_boxes

from sft.core.atomic import atomic_write, atomic_write_json
from sft.core.html import esc, img, page, table
from sft.core.rundir import RunDir, check_replaceable, mark
from sft.data.loaders import Inputs, eval_batches
from sft.data.splits import Splits, load_splits
from sft.errors import UserError
from sft.models.backbone import Backbone, Preprocess
from sft.models.vision import create_backbone
from sft.tasks.base import (TaskBase, check_eval_out, evaluation_target, load_parts, read_model_files,
                            write_evaluation, write_model_files)
from sft.tasks.detection.data import (BoxDataset, DetectionSamples, box_transforms, collate, load_image,
                                      read_detection, transform_image)
from sft.tasks.detection.diagnosis import CHECKS, check_before_training, diagnose
from sft.tasks.detection.metrics import confusion, match, mean_ap, pr_curves, summary
from sft.tasks.detection.module import Detector, auto_anchor_sizes, build_detector, from_detector
from sft.tasks.detection.options import OPTIONS
from sft.tasks.detection.recipe import DetectionRecipe
from sft.training.prepare import Prepared
from sft.training.trainer import Monitor

log = logging.getLogger("sft")
NEAR_ZERO = 0.05  # a validation mAP50 below this after training calls for the diagnosis
REPORT_SCORE = 0.3  # predictions shown in the report and counted in its confusions


@dataclass
class DetectionInfo:
    """What rebuilds and feeds a finished detector (model.json)."""
    backbone: str
    detector: str
    fpn_channels: int
    classes: list[str]
    image_size: int
    preprocess: Preprocess
    anchor_sizes: list[float]
    score_threshold: float = 0.05
    detections_per_image: int = 100
    task: str = "detection"


class TrainedDetector(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> list[dict]:
        return from_detector(self.head(x))


class Detection(TaskBase):
    name = "detection"
    description = "boxes and classes: an ImageNet backbone's feature maps, an FPN and a torchvision detector"
    recipe = DetectionRecipe
    monitor = Monitor("val_map50", "max")
    options = OPTIONS

    # -- training ------------------------------------------------------------------------------------------------
    def load_splits(self, recipe: DetectionRecipe) -> Splits:
        d = recipe.data
        splits = load_splits(d, recipe.seed, lambda source, classes: read_detection(source.path, source.format,
                                                                                   classes), classes=d.classes)
        where = {name: s.path if s is not None else f"held out of {d.train.path}"
                 for name, s in (("train", d.train), ("val", d.val), ("test", d.test))}
        check_before_training({"train": splits.train, "val": splits.val, "test": splits.test}, where)
        return splits

    def build_backbone(self, recipe: DetectionRecipe) -> Backbone:
        return create_backbone(recipe.model.backbone, recipe.model.weights, out="maps")

    def build_inputs(self, backbone: Backbone, recipe: DetectionRecipe | None) -> Inputs:
        size = recipe.data.image_size or backbone.preprocess.input_size[0]
        train_tf, eval_tf = box_transforms(size, recipe.data.augment)
        return Inputs(lambda s: BoxDataset(s, train_tf), lambda s: BoxDataset(s, eval_tf), collate, key=str(eval_tf))

    def loader_options(self, recipe, splits: Splits, inputs: Inputs, notes: dict) -> dict:
        notes["boxes"] = {name: {"images": len(s), "boxes": int(sum(len(b) for b in s.boxes)),
                                 "negatives": s.negatives}
                          for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))
                          if s is not None}
        return {}

    def build_module(self, recipe: DetectionRecipe, backbone, splits, schedule, channels_last) -> Detector:
        size = recipe.data.image_size or backbone.preprocess.input_size[0]
        anchors = recipe.model.anchor_sizes
        if anchors == "auto":
            anchors = auto_anchor_sizes(splits.train.box_sides(size), recipe.model.detector, backbone.reductions,
                                        backbone.module)
        return Detector(backbone, splits, schedule, recipe, size, anchors, channels_last)

    def export(self, run: RunDir, p: Prepared) -> None:
        m = p.recipe.model
        info = DetectionInfo(p.backbone.name, m.detector, m.fpn_channels, p.splits.classes, p.model.image_size,
                             p.backbone.preprocess, list(p.model.anchor_sizes), m.score_threshold,
                             m.detections_per_image)
        write_model_files(run.path, p.model, info)

    def final_metrics(self, p: Prepared, cached: bool) -> dict:
        metrics = {"anchor_sizes": list(p.model.anchor_sizes), "image_size": p.model.image_size}
        for split in ("val", "test"):
            if getattr(p.splits, split) is not None:
                s = evaluate(p.model, p.data.eval_dataset(split, False), p.splits.classes,
                             batch_size=p.recipe.data.batch_size)
                metrics.update({f"{split}_{k}": s[k] for k in ("map", "map50", "map75", "recall")})
                metrics[f"{split}_ap"] = dict(zip(p.splits.classes, s["ap"]))
        if metrics["val_map50"] < NEAR_ZERO:
            problems = diagnose(p.splits.train, p.model.image_size, p.model.anchor_sizes)
            metrics["diagnosis"] = {"checked": CHECKS, "problems": problems}
            log.warning(f"val mAP50 is {metrics['val_map50']:.3f}, near 0. Checked: {', '.join(CHECKS)}. " +
                        (" ".join(f"Problem: {q}." for q in problems) if problems else
                         "Nothing looks wrong in the data: train longer (more images or epochs), tune optim.lr, or "
                         "let the backbone train (strategy full or two-stage)."))
        return metrics

    # -- a finished run ------------------------------------------------------------------------------------------
    def evaluate(self, run_dir, data, out, options, *, overwrite, batch_size, progress):
        run, _, source, out = evaluation_target(run_dir, data, out)
        model, info = load_model(run.path)
        samples = read_detection(source.path, source.format, info.classes)
        check_eval_out(out, source.path, run.path, overwrite)
        dataset = BoxDataset(samples, box_transforms(info.image_size, "none")[1])
        result = evaluate(model, dataset, info.classes, batch_size=batch_size, top_n=options.top_losses,
                          progress=progress, extended=True)
        result["data"] = source.path
        brief = {k: result[k] for k in ("map", "map50", "map75", "recall", "samples")}
        brief["ap"] = dict(zip(info.classes, result["ap"]))
        report = render_report(run.path, source.path, info, samples, dataset, result)
        write_evaluation(out, result, brief, report)
        return out, brief

    def predict(self, run_dir, inputs, options, stream=None):
        """One row per detection of at least `options.score` (an image with none: one row without a class), boxes
        xyxy in the image's own pixels; with `options.out`, each image drawn with its boxes and its detections as JSON
        there."""
        files, out, score = inputs, options.out, options.score
        if not files:
            raise UserError("this run detects objects in images: pass image files (and --out DIR for drawings)")
        model, info = load_model(run_dir)
        if out is not None:  # a folder of earlier predictions takes more; any other non-empty folder is refused
            check_replaceable(out, "predictions", overwrite=True)
            Path(out).mkdir(parents=True, exist_ok=True)
            mark(Path(out), "predictions")
        _, eval_tf = box_transforms(info.image_size, "none")
        rows = []
        for file in files:
            image = load_image(file)
            h, w = image.shape[-2:]
            x = transform_image(eval_tf, image)
            with torch.inference_mode():
                found = model(x[None])[0]
            keep = found["scores"] >= score
            scale = torch.tensor([w / info.image_size, h / info.image_size] * 2)
            boxes, scores, labels = found["boxes"][keep] * scale, found["scores"][keep], found["labels"][keep]
            mine = [{"file": file, "class": info.classes[int(c)], "score": round(float(s), 4),
                     "xyxy": [round(float(v), 1) for v in b]} for b, s, c in zip(boxes, scores, labels)]
            rows += mine or [{"file": file, "class": None, "score": None, "xyxy": None}]
            if out is not None:
                stem = Path(file).stem
                drawn = draw(image, boxes, [f"{r['class']} {r['score']:.2f}" for r in mine], "red")
                atomic_write(Path(out) / f"{stem}.png", lambda tmp: _save_png(drawn, tmp))
                atomic_write_json(Path(out) / f"{stem}.json", mine)
        return rows


def _save_png(image: np.ndarray, path: str) -> None:
    from PIL import Image
    Image.fromarray(image).save(path, format="PNG")


def draw(image: torch.Tensor, boxes: torch.Tensor, labels: list[str] | None, colour: str) -> np.ndarray:
    """An RGB uint8 (H, W, 3) picture of a uint8 (3, H, W) image with its boxes."""
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if len(boxes):
        image = draw_bounding_boxes(image, boxes.float(), labels=labels, colors=colour, width=1)
    return image.permute(1, 2, 0).numpy()


def load_model(run_dir: str | Path) -> tuple[TrainedDetector, DetectionInfo]:
    info, state = read_model_files(run_dir, DetectionInfo)
    backbone = create_backbone(info.backbone, None, out="maps")
    head = build_detector(info.detector, backbone.module, backbone.channels, len(info.classes),
                          fpn_channels=info.fpn_channels, anchor_sizes=info.anchor_sizes, size=info.image_size,
                          preprocess=info.preprocess, score_threshold=info.score_threshold,
                          detections=info.detections_per_image)
    parts = nn.ModuleDict({"backbone": backbone.module, "head": head})
    load_parts(parts, state, run_dir)
    return TrainedDetector(parts["backbone"], parts["head"]).eval(), info


@torch.inference_mode()
def evaluate(model: nn.Module, dataset, classes: list[str], *, batch_size: int = 16, top_n: int = 0,
             progress: bool = False, extended: bool = False) -> dict:
    """COCO mAP of the whole split; with `extended`, per-class AP and recall, PR curves, the confusions at IoU 0.5
    (predictions of at least REPORT_SCORE) and the `top_n` images with the most errors, with those predictions
    (kept from this one pass, for the report to draw)."""
    model.eval()
    device = next(model.parameters()).device
    metric = mean_ap(extended=True).to(device)
    matches, worst, index = [], [], 0
    for x, targets in eval_batches(dataset, batch_size, collate, progress, "evaluating"):
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        found = model(x.to(device))
        metric.update(found, targets)
        if not (extended or top_n):  # training's final metrics: the mAP only, no matching (and no GPU syncs)
            index += len(found)
            continue
        found, targets = ([{k: v.cpu() for k, v in d.items()} for d in ds] for ds in (found, targets))  # one copy
        for pred, target in zip(found, targets):
            m = match(pred, target, REPORT_SCORE)
            matches.append(m)
            if top_n and m["errors"]:
                item = (m["errors"], -index, shown(pred))  # (errors, -index) are unique: predictions never compared
                heapq.heappush(worst, item) if len(worst) < top_n else heapq.heappushpop(worst, item)
            index += 1
    raw = metric.compute()
    result = summary(raw, classes)
    result.update(samples=index, classes=classes)
    if extended:
        result.update(pr_curves=pr_curves(raw, classes), confusion=confusion(matches, len(classes)).tolist(),
                      worst=[{"index": -i, "errors": e, **p} for e, i, p in sorted(worst, reverse=True)],
                      report_score=REPORT_SCORE)
    return result


def shown(pred: dict) -> dict:
    """An image's predictions of at least REPORT_SCORE, as JSON (boxes xyxy in the model's input pixels)."""
    keep = pred["scores"] >= REPORT_SCORE
    return {"boxes": [[round(float(v), 2) for v in b] for b in pred["boxes"][keep]],
            "scores": [round(float(v), 4) for v in pred["scores"][keep]],
            "labels": [int(c) for c in pred["labels"][keep]]}


def render_report(run: Path, data: str, info: DetectionInfo, samples: DetectionSamples, dataset,
                  result: dict) -> str:
    """report.html: the scores, per-class AP table, precision-recall curves, confusions at IoU 0.5, worst images."""
    classes = info.classes
    counts = np.bincount(np.concatenate([np.zeros(0, np.int64), *samples.box_labels]), minlength=len(classes))
    per_class = [[c, "-" if ap is None else f"{ap:.4f}", "-" if r is None else f"{r:.4f}", int(n)]
                 for c, ap, r, n in zip(classes, result["ap"], result["class_recall"], counts)]
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    recall = np.linspace(0, 1, 101)
    for name, curve in result["pr_curves"].items():
        axes.plot(recall, curve, label=name)
    axes.set(xlabel="recall", ylabel="precision", title="IoU 0.5", xlim=(0, 1), ylim=(0, 1.02))
    if result["pr_curves"]:
        axes.legend(fontsize=7, loc="lower left")
    matrix = result["confusion"]
    confusion_table = table(["target \\ predicted", *classes, "missed"],
                            [[name, *row] for name, row in zip([*classes, "(no box)"], matrix)])
    cards = []
    for row in result["worst"]:
        i = row["index"]
        x, target = dataset[i]  # the image again; its predictions are evaluate's, the model does not run here
        truth = draw(x, target["boxes"], [classes[int(c)] for c in target["labels"]], "lime")
        found = draw(x, torch.tensor(row["boxes"]).reshape(-1, 4),
                     [f"{classes[c]} {s:.2f}" for c, s in zip(row["labels"], row["scores"])], "red")
        cards.append(f"<div class=card>{img(truth, 'truth')}{img(found, 'prediction')}<br>"
                     f"{esc(Path(samples.items[i]).name)}: {row['errors']} errors</div>")
    body = (f"<h1>Detection evaluation of {esc(run)}</h1><p>Data: {esc(data)} ({result['samples']} images, "
            f"{samples.negatives} without boxes). mAP (IoU .50:.95) <b>{result['map']:.4f}</b>, mAP50 "
            f"<b>{result['map50']:.4f}</b>, mAP75 {result['map75']:.4f}, recall (100 detections) "
            f"{result['recall']:.4f}.</p>"
            f"<h2 id=per-class>Per class</h2>{table(['class', 'AP', 'recall', 'boxes'], per_class)}"
            f"<h2 id=pr>Precision-recall curves</h2>{img(figure, 'precision-recall curves')}"
            f"<h2 id=confusion>Confusions at IoU 0.5 (predictions of score &ge; {result['report_score']})</h2>"
            f"{confusion_table}"
            f"<h2 id=worst>Most errors: truth (green) | prediction (red)</h2><div class=grid>{''.join(cards)}</div>")
    css = ("body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1150px}table{border-collapse:collapse}"
           "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}.grid{display:flex;flex-wrap:wrap;"
           "gap:10px}.card{font-size:12px}.card img{width:192px;height:192px;image-rendering:pixelated;margin:1px}")
    return page(f"sft detection evaluation: {run.name}", body, css)
