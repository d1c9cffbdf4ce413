"""Object detection behind the Task protocol: COCO, YOLO/Ultralytics or Pascal VOC boxes, an ImageNet backbone in
feature-map mode with an FPN and a torchvision detector, val_map50 monitored, and a finished run that evaluates (COCO
mAP, per-class AP, precision-recall curves, class confusions at IoU 0.5, the worst images drawn) and predicts boxes.

The feature cache is not used (as for segmentation): a frozen backbone's maps are large, and the box-aware crops and
flips change them every epoch. When the validation mAP50 stays near 0, the run says what it checked in the data and
what looks wrong (sft.tasks.detection.diagnosis), in the log and in metrics.json; the checks that need no model (no
box at all, boxes normalised where pixels are wanted) run when the splits are read, before any training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sft.core.atomic import atomic_write, atomic_write_json
from sft.core.rundir import RunDir
from sft.data.loaders import Inputs
from sft.data.splits import Splits, load_splits
from sft.errors import UserError
from sft.models.backbone import Backbone, Preprocess
from sft.models.tta import FlipMergedBoxes
from sft.models.vision import create_backbone
from sft.tasks.base import TaskBase, load_model_files, read_run_info, score_batches, write_model_files
from sft.tasks.dense_auto import resolve_dense
from sft.tasks.detection.data import BoxDataset, box_transforms, collate, load_image, read_detection, transform_image
from sft.tasks.detection.diagnosis import CHECKS, check_before_training, diagnose
from sft.tasks.detection.layouts import dataset_splits
from sft.tasks.detection.metrics import DetectionScorer
from sft.tasks.detection.module import Detector, auto_anchor_sizes, build_detector, from_detector
from sft.tasks.detection.onnx import export_onnx, load_onnx
from sft.tasks.detection.options import OPTIONS
from sft.tasks.detection.recipe import DetectionRecipe
from sft.tasks.detection.report import draw, render_report, save_png
from sft.tasks.detection.serving import BoxPredictor, detections
from sft.training.prepare import Prepared
from sft.training.trainer import Monitor

log = logging.getLogger("sft")
NEAR_ZERO = 0.05  # a validation mAP50 below this after training calls for the diagnosis


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


def with_tta(model, info: DetectionInfo, tta: str):
    """`--tta flip`: the detections of each image and of its mirror image, merged at IoU 0.5 (COCO's match)."""
    return FlipMergedBoxes(model, iou=0.5, keep=info.detections_per_image) if tta == "flip" else model


class Detection(TaskBase):
    name = "detection"
    description = "boxes and classes: an ImageNet backbone's feature maps, an FPN and a torchvision detector"
    recipe = DetectionRecipe
    monitor = Monitor("val_map50", "max")
    options = OPTIONS

    # -- training ------------------------------------------------------------------------------------------------
    def load_splits(self, recipe: DetectionRecipe) -> Splits:
        d = recipe.data
        splits = load_splits(d, recipe.seed, lambda source, classes: read_detection(
            source.path, source.format, classes, source.split), classes=d.classes)
        where = {name: (f"{s.path} ({s.split})" if s.split else s.path) if s is not None else
                 f"held out of {d.train.path}" for name, s in (("train", d.train), ("val", d.val), ("test", d.test))}
        check_before_training({"train": splits.train, "val": splits.val, "test": splits.test}, where)
        return splits

    def resolve_auto(self, recipe: DetectionRecipe, splits: Splits, device, notes: dict) -> DetectionRecipe:
        return resolve_dense(recipe, "fpn_channels", [max(size) for size in splits.train.sizes], device, notes)

    def build_backbone(self, recipe: DetectionRecipe) -> Backbone:
        return create_backbone(recipe.model.backbone, recipe.model.weights, out="maps")

    def build_inputs(self, backbone: Backbone, recipe: DetectionRecipe | None) -> Inputs:
        size = recipe.data.image_size or backbone.preprocess.input_size[0]
        train_tf, eval_tf = box_transforms(size, recipe.data.augment)
        d, epochs = recipe.data, recipe.trainer.epochs
        return Inputs(lambda s: BoxDataset(s, train_tf, d.mosaic, epochs - d.close_mosaic),
                      lambda s: BoxDataset(s, eval_tf), collate, key=str(eval_tf))

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

    def write_model(self, run: RunDir, p: Prepared) -> None:
        m = p.recipe.model
        info = DetectionInfo(p.backbone.name, m.detector, m.fpn_channels, p.splits.classes, p.model.image_size,
                             p.backbone.preprocess, list(p.model.anchor_sizes), m.score_threshold,
                             m.detections_per_image)
        write_model_files(run.path, p.model, info)

    def final_metrics(self, p: Prepared, cached: bool) -> dict:
        metrics = {"anchor_sizes": list(p.model.anchor_sizes), "image_size": p.model.image_size}
        for split in ("val", "test"):
            if getattr(p.splits, split) is not None:
                s = score_batches(p.model, p.data.eval_dataset(split, False), DetectionScorer(p.splits.classes),
                                  batch_size=p.recipe.data.batch_size, collate_fn=collate)
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
    def run_info(self, run_dir: Path) -> DetectionInfo:
        return read_run_info(run_dir, DetectionInfo)

    def eval_samples(self, recipe, source, info: DetectionInfo):
        """A source holding several splits (`--data data.yaml`) is scored on its test split, else its val split."""
        split = source.split or next((s for s in ("test", "val")
                                      if s in dataset_splits(Path(source.path), source.format)), None)
        return read_detection(source.path, source.format, info.classes, split)

    def load_run(self, run_dir: Path, info: DetectionInfo, engine: str = "torch") -> nn.Module:
        """The PyTorch model, or with engine onnx the run's export through onnxruntime (the same call: per image a
        dict of boxes, scores and labels)."""
        if engine == "onnx":
            return load_onnx(run_dir)
        if engine != "torch":
            raise UserError(f"--engine {engine}: detection runs predict with torch or onnx")
        backbone = create_backbone(info.backbone, None, out="maps")
        head = build_detector(info.detector, backbone.module, backbone.channels, len(info.classes),
                              fpn_channels=info.fpn_channels, anchor_sizes=info.anchor_sizes, size=info.image_size,
                              preprocess=info.preprocess, score_threshold=info.score_threshold,
                              detections=info.detections_per_image)
        return TrainedDetector(*load_model_files(run_dir, backbone.module, head)).eval()

    def score_run(self, run, recipe, source, samples, model, info: DetectionInfo, options, *, batch_size, progress):
        """COCO mAP, per-class AP and recall, PR curves, the confusions at IoU 0.5, the images with most errors."""
        dataset = BoxDataset(samples, box_transforms(info.image_size, "none")[1])
        scorer = DetectionScorer(info.classes, extended=True, top_n=options.top_losses)
        result = score_batches(with_tta(model, info, options.tta), dataset, scorer, batch_size=batch_size,
                               collate_fn=collate, progress=progress)
        result["data"] = source.path
        brief = {k: result[k] for k in ("map", "map50", "map75", "recall", "samples")}
        brief["ap"] = dict(zip(info.classes, result["ap"]))
        return result, brief, render_report(run.path, source.path, info, samples, dataset, result)

    def export(self, run_dir, out, options, *, force, overwrite):
        if options.format != "onnx":
            raise UserError(f"--format {options.format}: detection runs export as onnx")
        return export_onnx(self, run_dir, out, force=force, overwrite=overwrite)

    def inference_model(self, run_dir, model, info, options):
        return with_tta(model, info, options.tta), info

    def predict_rows(self, model, info: DetectionInfo, inputs, options, folder, stream):
        """One row per detection of at least `options.score` (an image with none: one row without a class), boxes
        xyxy in the image's own pixels; with a folder, each image drawn with its boxes and its detections as JSON
        there."""
        _, eval_tf = box_transforms(info.image_size, "none")
        rows = []
        for file in inputs:
            image = load_image(file)
            h, w = image.shape[-2:]
            x = transform_image(eval_tf, image)
            with torch.inference_mode():
                found = model(x[None])[0]
            boxes, scores, labels = detections(found, (w, h), info.image_size, options.score)
            mine = [{"file": file, "class": info.classes[int(c)], "score": round(float(s), 4),
                     "xyxy": [round(float(v), 1) for v in b]} for b, s, c in zip(boxes, scores, labels)]
            rows += mine or [{"file": file, "class": None, "score": None, "xyxy": None}]
            if folder is not None:
                stem = Path(file).stem
                drawn = draw(image, boxes, [f"{r['class']} {r['score']:.2f}" for r in mine], "red")
                atomic_write(folder / f"{stem}.png", lambda tmp: save_png(drawn, tmp))
                atomic_write_json(folder / f"{stem}.json", mine)
        return rows

    def predictor(self, run_dir, options):
        return BoxPredictor(self, run_dir, options.engine)
