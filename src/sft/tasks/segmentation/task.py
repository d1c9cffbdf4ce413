"""Semantic segmentation behind the Task protocol: images with masks, an ImageNet encoder in feature-map mode with a
new smp decoder (or a whole model from `model.checkpoint`, starting_weights.py), a per-pixel loss, val_miou monitored, and
a finished run that evaluates (mIoU, per-class IoU, per-pixel calibration, the worst images as overlays), audits the
validation and test masks (audit.py) and predicts masks.

The feature cache is not used: a frozen encoder's maps at five scales take about 0.4 MB per 128 px image (a
thousand times a pooled vector), and random crops and flips change them every epoch, so caching would cost disk and
memory to save only the encoder's forward pass, while the decoder still trains on every batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from sft.core.atomic import atomic_write
from sft.core.rundir import RunDir
from sft.data.loaders import Inputs
from sft.data.samples import read_image
from sft.data.splits import Splits, load_splits
from sft.errors import UserError
from sft.models.backbone import Backbone, Preprocess
from sft.models.tta import FlipAverage
from sft.models.vision import create_backbone
from sft.tasks.base import TaskBase, load_model_files, read_run_info, score_batches, write_model_files
from sft.tasks.dense_auto import file_sides, resolve_dense
from sft.tasks.segmentation.audit import audit_masks
from sft.tasks.segmentation.calibration import calibrate_run
from sft.tasks.segmentation.data import (PairDataset, check_layout, eval_dataset, joint_transforms, label_table,
                                         palette_lookup, read_pairs)
from sft.tasks.segmentation.layouts import dataset_splits
from sft.tasks.segmentation.metrics import SegmentationScorer
from sft.tasks.segmentation.module import DecoderHead, Segmenter, segment
from sft.tasks.segmentation.onnx import export_onnx, load_onnx
from sft.tasks.segmentation.options import OPTIONS
from sft.tasks.segmentation.recipe import SegmentationRecipe
from sft.tasks.segmentation.report import overlay, render_report
from sft.tasks.segmentation.serving import (MaskPredictor, class_maps, class_shares, eval_transform,
                                            full_mask, image_input)
from sft.training.prepare import Prepared
from sft.training.trainer import Monitor


@dataclass
class SegmentationInfo:
    """What rebuilds and feeds a finished segmentation model (model.json)."""
    backbone: str
    decoder: str
    decoder_channels: int
    classes: list[str]
    image_size: int
    preprocess: Preprocess
    ignore_index: int = 255
    palette: dict | None = None
    channels_last: bool = False
    task: str = "segmentation"
    label_map: dict | None = None


class TrainedSegmenter(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, channels_last: bool):
        super().__init__()
        self.backbone, self.head, self.channels_last = backbone, head, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return segment(self.backbone, self.head, x, self.channels_last)


def with_tta(model, tta: str):
    """`--tta flip`: per-pixel logits of each image and of its mirror image (mirrored back), averaged. The run's
    temperature stays the plain model's."""
    return FlipAverage(model, dense=True) if tta == "flip" else model


class Segmentation(TaskBase):
    name = "segmentation"
    description = "a class for every pixel: an ImageNet encoder's feature maps with a new smp decoder"
    recipe = SegmentationRecipe
    monitor = Monitor("val_miou", "max")
    options = OPTIONS

    # -- training ------------------------------------------------------------------------------------------------
    def load_splits(self, recipe: SegmentationRecipe) -> Splits:
        d = recipe.data
        if not d.classes:  # a wrong layout is the mistake to name, not the class names it has no file for
            check_layout(d.train.path, d.train.format)
        classes = d.classes or _classes_file(d.train.path)
        read = lambda source, _: read_pairs(source.path, source.format, classes, d.ignore_index, d.palette,  # noqa
                                            d.label_map, source.split)
        return load_splits(d, recipe.seed, read, classes=d.classes)

    def resolve_auto(self, recipe: SegmentationRecipe, splits: Splits, device, notes: dict) -> SegmentationRecipe:
        sides = file_sides([image for image, _ in splits.train.items], recipe.seed)
        return resolve_dense(recipe, "decoder_channels", sides, device, notes)

    def build_backbone(self, recipe: SegmentationRecipe) -> Backbone:
        return create_backbone(recipe.model.backbone, recipe.model.weights, out="maps")

    def build_inputs(self, backbone: Backbone, recipe: SegmentationRecipe | None) -> Inputs:
        d = recipe.data
        size = image_size(d.image_size, backbone.preprocess)
        train_tf, eval_tf = joint_transforms(backbone.preprocess, size, d.augment, d.ignore_index)
        lookup = palette_lookup(d.palette, d.classes or _classes_file(d.train.path)) if d.palette else None
        table = label_table(d.label_map, d.ignore_index)
        return Inputs(lambda s: PairDataset(s, train_tf, lookup, table),
                      lambda s: PairDataset(s, eval_tf, lookup, table), None, key=str(eval_tf))

    def build_module(self, recipe, backbone, splits, schedule, channels_last) -> Segmenter:
        return Segmenter(backbone, splits, schedule, recipe, channels_last)

    def write_model(self, run: RunDir, p: Prepared) -> None:
        d = p.recipe.data
        info = SegmentationInfo(p.backbone.name, p.recipe.model.decoder, p.recipe.model.decoder_channels,
                                p.splits.classes,
                                image_size(d.image_size, p.backbone.preprocess), p.backbone.preprocess,
                                d.ignore_index, d.palette, p.channels_last, label_map=d.label_map)
        write_model_files(run.path, p.model, info)

    def final_metrics(self, p: Prepared, cached: bool) -> dict:
        metrics = {}
        for split in ("val", "test"):
            if getattr(p.splits, split) is not None:
                s = score_batches(p.model, p.data.eval_dataset(split, False),
                                  SegmentationScorer(p.splits.classes, p.recipe.data.ignore_index),
                                  batch_size=p.recipe.data.batch_size)
                metrics.update({f"{split}_miou": s["miou"], f"{split}_pixel_acc": s["pixel_acc"],
                                f"{split}_mean_dice": s["mean_dice"],
                                f"{split}_iou": dict(zip(p.splits.classes, s["iou"]))})
        return metrics

    # -- a finished run ------------------------------------------------------------------------------------------
    def run_info(self, run_dir: Path) -> SegmentationInfo:
        return read_run_info(run_dir, SegmentationInfo)

    def eval_samples(self, recipe, source, info: SegmentationInfo):
        """A VOC or Cityscapes root given as `--data` is scored on its test split, else its val split."""
        split = source.split or next((s for s in ("test", "val")
                                      if s in dataset_splits(Path(source.path), source.format)), None)
        return read_pairs(source.path, source.format, info.classes, info.ignore_index, info.palette, info.label_map,
                          split)

    def load_run(self, run_dir: Path, info: SegmentationInfo, engine: str = "torch"):
        """The PyTorch model, or with engine onnx the run's export through onnxruntime (the same transform and
        post-processing, onnxruntime computes the logits)."""
        if engine == "onnx":
            return load_onnx(run_dir)
        backbone = create_backbone(info.backbone, None, out="maps")
        head = DecoderHead(info.decoder, backbone.channels, backbone.reductions, len(info.classes),
                           info.decoder_channels)
        model = TrainedSegmenter(*load_model_files(run_dir, backbone.module, head), info.channels_last).eval()
        if info.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def score_run(self, run, recipe, source, samples, model, info: SegmentationInfo, options, *, batch_size,
                  progress):
        """mIoU and per-class scores, per-pixel calibration at the run's temperature (fitted on its validation
        split, once), the worst images with their predicted masks."""
        calibration = calibrate_run(run.path, model, lambda: _val_dataset(self, recipe, info), info.ignore_index,
                                    batch_size=batch_size, seed=recipe.seed, progress=progress)
        dataset = eval_dataset(info, samples)
        scorer = SegmentationScorer(info.classes, info.ignore_index, top_n=options.top_losses,
                                    temperature=calibration["temperature"])
        result = score_batches(with_tta(model, options.tta), dataset, scorer, batch_size=batch_size,
                               progress=progress)
        result["data"], result["calibration"] = source.path, calibration
        summary = {k: result[k] for k in ("miou", "pixel_acc", "mean_dice", "ece", "ece_calibrated", "temperature",
                                          "samples")}
        summary["iou"] = {c: v for c, v in zip(info.classes, result["iou"])}
        return result, summary, render_report(run.path, source.path, info, samples, dataset, result,
                                              scorer.worst_masks())

    def audit(self, recipe: SegmentationRecipe, out, *, overwrite, also):
        """`sft audit`: the recipe's validation and test masks scored by its finished run (why: audit.py)."""
        if also:
            raise UserError("--also adds backbones to classification's probes; a mask audit scores the masks with "
                            "the recipe's finished run")
        run = Path(recipe.run_dir)
        if not (run / "model.json").is_file():
            raise UserError(f"{run}: no finished run; a mask audit scores the masks with the run's trained model: "
                            f"train it first (sft train RECIPE), or set run_dir to a finished run on this data")
        info = self.run_info(run)
        return audit_masks(recipe, self.load_splits(recipe), self.load_run(run, info), info, Path(out),
                           overwrite=overwrite, batch_size=recipe.data.batch_size)

    def export(self, run_dir, out, options, *, force, overwrite):
        if options.format != "onnx":
            raise UserError(f"--format {options.format}: segmentation runs export as onnx")
        return export_onnx(self, run_dir, out, force=force, overwrite=overwrite)

    def inference_model(self, run_dir, model, info, options):
        return with_tta(model, options.tta), info

    def predict_rows(self, model, info: SegmentationInfo, inputs, options, folder, stream):
        """Per image: the share of pixels of each class; with a folder, its index mask and colour overlay there."""
        transform, rows = eval_transform(info), []
        for file in inputs:
            image = read_image(file)
            mask = full_mask(class_maps(model, image_input(image, transform)[None])[0], image.size)
            shares = class_shares(mask, len(info.classes))
            row = {"file": file, **{c: round(float(v), 4) for c, v in zip(info.classes, shares)}}
            if folder is not None:
                stem = Path(file).stem
                shown = overlay(np.asarray(image), mask)
                atomic_write(folder / f"{stem}.png", lambda tmp: Image.fromarray(mask).save(tmp, format="PNG"))
                atomic_write(folder / f"{stem}-overlay.png",
                             lambda tmp: Image.fromarray(shown).save(tmp, format="PNG"))
                row["mask"] = str(folder / f"{stem}.png")
            rows.append(row)
        return rows

    def predictor(self, run_dir, options):
        return MaskPredictor(self, run_dir, options.engine)


def image_size(size: int | None, pre: Preprocess) -> int:
    size = size or pre.input_size[0]
    if size % 32:
        raise UserError(f"data.image_size {size}: segmentation needs a multiple of 32 (the encoder's stride), e.g. "
                        f"{max(32, round(size / 32) * 32)}")
    return size


def _classes_file(path: str) -> list[str]:
    for folder in (Path(path), Path(path).parent):
        names = folder / "classes.txt"
        if names.is_file():
            return [line.strip() for line in names.read_text().splitlines() if line.strip()]
    raise UserError(f"{path}: set data.classes (class names in mask-index order, background first) or put a "
                    f"classes.txt beside the data")


def _val_dataset(task: Segmentation, recipe: SegmentationRecipe, info: SegmentationInfo) -> PairDataset | None:
    """The run's validation images (its temperature is fitted there): a given data.val is read alone, without
    reading and checking every training mask; a share held out of train needs the whole split."""
    d = recipe.data
    if d.val is None or d.val_limit:
        val = task.load_splits(recipe).val
    else:
        val = read_pairs(d.val.path, d.val.format, info.classes, info.ignore_index, info.palette, info.label_map,
                         d.val.split)
    return eval_dataset(info, val) if val is not None else None
