"""Semantic segmentation behind the Task protocol: images with masks, an ImageNet encoder in feature-map mode with a
new smp decoder (or a whole model from `model.checkpoint`, starting_weights.py), a per-pixel loss, val_miou monitored, and
a finished run that evaluates (mIoU, per-class IoU, per-pixel calibration, the worst images as overlays), audits the
validation and test masks (audit.py) and predicts masks.

The feature cache is not used: a frozen encoder's maps at five scales take about 0.4 MB per 128 px image (a
thousand times a pooled vector), and random crops and flips change them every epoch, so caching would cost disk and
memory to save only the encoder's forward pass, while the decoder still trains on every batch.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import tv_tensors

from sft.core.atomic import atomic_write
from sft.core.html import esc, img, page, table
from sft.core.rundir import RunDir, check_replaceable, mark
from sft.data.loaders import Inputs, eval_batches
from sft.data.samples import Samples, read_image
from sft.data.splits import Splits, load_splits
from sft.errors import UserError
from sft.models.backbone import Backbone, Preprocess
from sft.models.vision import create_backbone
from sft.tasks.base import (TaskBase, check_eval_out, evaluation_target, load_parts, read_model_files,
                            write_evaluation, write_model_files)
from sft.tasks.segmentation.audit import audit_masks
from sft.tasks.segmentation.calibration import PixelCalibration, calibrate_run, calibration_section
from sft.tasks.segmentation.data import PairDataset, check_layout, joint_transforms, palette_lookup, read_pairs
from sft.tasks.segmentation.metrics import ConfusionMatrix, confusion, scores
from sft.tasks.segmentation.module import DecoderHead, Segmenter, segment
from sft.tasks.segmentation.onnx import export_onnx, load_onnx
from sft.tasks.segmentation.options import OPTIONS
from sft.tasks.segmentation.recipe import SegmentationRecipe
from sft.training.prepare import Prepared
from sft.training.trainer import Monitor

COLOURS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0]], dtype=np.uint8)


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


class TrainedSegmenter(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, channels_last: bool):
        super().__init__()
        self.backbone, self.head, self.channels_last = backbone, head, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return segment(self.backbone, self.head, x, self.channels_last)


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
        read = lambda source, _: read_pairs(source.path, source.format, classes, d.ignore_index, d.palette)  # noqa
        return load_splits(d, recipe.seed, read, classes=d.classes)

    def build_backbone(self, recipe: SegmentationRecipe) -> Backbone:
        return create_backbone(recipe.model.backbone, recipe.model.weights, out="maps")

    def build_inputs(self, backbone: Backbone, recipe: SegmentationRecipe | None) -> Inputs:
        d = recipe.data
        size = image_size(d.image_size, backbone.preprocess)
        train_tf, eval_tf = joint_transforms(backbone.preprocess, size, d.augment, d.ignore_index)
        lookup = palette_lookup(d.palette, d.classes or _classes_file(d.train.path)) if d.palette else None
        return Inputs(lambda s: PairDataset(s, train_tf, lookup), lambda s: PairDataset(s, eval_tf, lookup), None,
                      key=str(eval_tf))

    def build_module(self, recipe, backbone, splits, schedule, channels_last) -> Segmenter:
        return Segmenter(backbone, splits, schedule, recipe, channels_last)

    def export(self, run: RunDir, p: Prepared) -> None:
        d = p.recipe.data
        info = SegmentationInfo(p.backbone.name, p.recipe.model.decoder, p.recipe.model.decoder_channels,
                                p.splits.classes,
                                image_size(d.image_size, p.backbone.preprocess), p.backbone.preprocess,
                                d.ignore_index, d.palette, p.channels_last)
        write_model_files(run.path, p.model, info)

    def final_metrics(self, p: Prepared, cached: bool) -> dict:
        metrics = {}
        for split in ("val", "test"):
            if getattr(p.splits, split) is not None:
                s, _ = evaluate(p.model, p.data.eval_dataset(split, False), p.splits.classes,
                                p.recipe.data.ignore_index, batch_size=p.recipe.data.batch_size)
                metrics.update({f"{split}_miou": s["miou"], f"{split}_pixel_acc": s["pixel_acc"],
                                f"{split}_mean_dice": s["mean_dice"],
                                f"{split}_iou": dict(zip(p.splits.classes, s["iou"]))})
        return metrics

    # -- a finished run ------------------------------------------------------------------------------------------
    def evaluate(self, run_dir, data, out, options, *, overwrite, batch_size, progress):
        run, recipe, source, out = evaluation_target(run_dir, data, out)
        model, info = load_model(run.path)
        samples = read_pairs(source.path, source.format, info.classes, info.ignore_index, info.palette)
        check_eval_out(out, source.path, run.path, overwrite)
        calibration = calibrate_run(run.path, model, lambda: _val_dataset(self, recipe, info), info.ignore_index,
                                    batch_size=batch_size, seed=recipe.seed, progress=progress)
        dataset = eval_dataset(info, samples)
        result, worst_masks = evaluate(model, dataset, info.classes, info.ignore_index, batch_size=batch_size,
                                       top_n=options.top_losses, progress=progress,
                                       temperature=calibration["temperature"])
        result["data"], result["calibration"] = source.path, calibration
        summary = {k: result[k] for k in ("miou", "pixel_acc", "mean_dice", "ece", "ece_calibrated", "temperature",
                                          "samples")}
        summary["iou"] = {c: v for c, v in zip(info.classes, result["iou"])}
        report = render_report(run.path, source.path, info, samples, dataset, result, worst_masks)
        write_evaluation(out, result, summary, report)
        return out, summary

    def audit(self, recipe: SegmentationRecipe, out, *, overwrite, also):
        """`sft audit`: the recipe's validation and test masks scored by its finished run (why: audit.py)."""
        if also:
            raise UserError("--also adds backbones to classification's probes; a mask audit scores the masks with "
                            "the recipe's finished run")
        run = Path(recipe.run_dir)
        if not (run / "model.json").is_file():
            raise UserError(f"{run}: no finished run; a mask audit scores the masks with the run's trained model: "
                            f"train it first (sft train RECIPE), or set run_dir to a finished run on this data")
        model, info = load_model(run)
        return audit_masks(recipe, self.load_splits(recipe), model, info, Path(out), overwrite=overwrite,
                           eval_dataset=eval_dataset, overlay=overlay, batch_size=recipe.data.batch_size)

    def export_model(self, run_dir, out, options, *, force, overwrite):
        if options.format != "onnx":
            raise UserError(f"--format {options.format}: segmentation runs export as onnx")
        return export_onnx(self, run_dir, out, force=force, overwrite=overwrite, load_model=load_model,
                           eval_dataset=eval_dataset)

    def predict(self, run_dir, inputs, options, stream=None):
        """Per image: the share of pixels of each class; with `options.out`, its index mask and colour overlay there."""
        files, out = inputs, options.out
        if not files:
            raise UserError("this run segments images: pass image files (and --out DIR for the masks)")
        if options.engine == "onnx":  # the same transform and post-processing, onnxruntime computes the logits
            info, model = read_model_files(run_dir, SegmentationInfo)[0], load_onnx(run_dir)
        else:
            model, info = load_model(run_dir)
        if out is not None:  # a folder of earlier predictions takes more; any other non-empty folder is refused
            check_replaceable(out, "predictions", overwrite=True)
            Path(out).mkdir(parents=True, exist_ok=True)
            mark(Path(out), "predictions")
        _, eval_tf = joint_transforms(info.preprocess, info.image_size, "none", info.ignore_index)
        rows = []
        for file in files:
            image = read_image(file)
            x = eval_tf(tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1)))
            with torch.inference_mode():
                pred = model(x[None]).argmax(1)[0].to(torch.uint8).numpy()
            mask = np.asarray(Image.fromarray(pred).resize(image.size, Image.NEAREST))
            shares = np.bincount(mask.ravel(), minlength=len(info.classes)) / mask.size
            row = {"file": file, **{c: round(float(v), 4) for c, v in zip(info.classes, shares)}}
            if out is not None:
                stem = Path(file).stem
                shown = overlay(np.asarray(image), mask)
                atomic_write(Path(out) / f"{stem}.png", lambda tmp: Image.fromarray(mask).save(tmp, format="PNG"))
                atomic_write(Path(out) / f"{stem}-overlay.png",
                             lambda tmp: Image.fromarray(shown).save(tmp, format="PNG"))
                row["mask"] = str(Path(out) / f"{stem}.png")
            rows.append(row)
        return rows


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


def load_model(run_dir: str | Path) -> tuple[TrainedSegmenter, SegmentationInfo]:
    info, state = read_model_files(run_dir, SegmentationInfo)
    backbone = create_backbone(info.backbone, None, out="maps")
    head = DecoderHead(info.decoder, backbone.channels, backbone.reductions, len(info.classes), info.decoder_channels)
    parts = nn.ModuleDict({"backbone": backbone.module, "head": head})
    load_parts(parts, state, run_dir)
    model = TrainedSegmenter(parts["backbone"], parts["head"], info.channels_last).eval()
    if info.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, info


def _val_dataset(task: Segmentation, recipe: SegmentationRecipe, info: SegmentationInfo) -> PairDataset | None:
    """The run's validation images (its temperature is fitted there): a given data.val is read alone, without
    reading and checking every training mask; a share held out of train needs the whole split."""
    d = recipe.data
    if d.val is None or d.val_limit:
        val = task.load_splits(recipe).val
    else:
        val = read_pairs(d.val.path, d.val.format, info.classes, info.ignore_index, info.palette)
    return eval_dataset(info, val) if val is not None else None


def eval_dataset(info: SegmentationInfo, samples: Samples) -> PairDataset:
    _, eval_tf = joint_transforms(info.preprocess, info.image_size, "none", info.ignore_index)
    return PairDataset(samples, eval_tf, palette_lookup(info.palette, info.classes) if info.palette else None)


@torch.inference_mode()
def evaluate(model: nn.Module, dataset, classes: list[str], ignore_index: int, *, batch_size: int = 32,
             top_n: int = 0, progress: bool = False, temperature: float = 1.0) -> tuple[dict, list[np.ndarray]]:
    """Scores of the whole split from one confusion matrix, per-pixel calibration (raw and at `temperature`), and
    the `top_n` images of lowest IoU (in the scores), with the masks predicted for them (the second value)."""
    model.eval()
    device = next(model.parameters()).device
    total = ConfusionMatrix(len(classes), ignore_index).to(device)
    calibration = PixelCalibration(ignore_index, temperature)
    worst: list[tuple[float, int]] = []
    kept: dict[int, np.ndarray] = {}  # the worst images' predicted masks, for the report (no second forward pass)
    index = 0
    for x, y in eval_batches(dataset, batch_size, None, progress, "evaluating"):
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        pred = logits.argmax(1)
        total.update(pred, y)
        calibration.update(logits, y)
        for p, t in zip(pred, y):
            if top_n:  # this image's own matrix: a bincount, no Metric object per image
                item = (-scores(confusion(p[None], t[None], len(classes), ignore_index))["miou"], -index)
                dropped = heapq.heappush(worst, item) if len(worst) < top_n else heapq.heappushpop(worst, item)
                if dropped != item:
                    kept[index] = p.cpu().numpy().astype(np.uint8)
                    if dropped:
                        del kept[-dropped[1]]
            index += 1
    result = scores(total.compute()) | calibration.result()
    result.update(samples=index, classes=classes, matrix=total.compute().cpu().tolist(),
                  worst=[{"index": -i, "miou": -v} for v, i in sorted(worst, reverse=True)])
    return result, [kept[row["index"]] for row in result["worst"]]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    colours = COLOURS[mask % len(COLOURS)]
    shown = np.where(mask[..., None] > 0, (1 - alpha) * image + alpha * colours, image)
    return shown.astype(np.uint8)


def render_report(run: Path, data: str, info: SegmentationInfo, samples: Samples, dataset, result,
                  worst_masks: list[np.ndarray]) -> str:
    """report.html: the scores, per-class IoU and pixels, the confusion matrix (row shares), per-pixel calibration,
    the worst images with the masks predicted for them during the evaluation."""
    classes = info.classes
    per_class = [[c, "-" if iou is None else f"{iou:.4f}", "-" if d is None else f"{d:.4f}", n]
                 for c, iou, d, n in zip(classes, result["iou"], result["dice"], result["pixels"])]
    matrix = np.asarray(result["matrix"], dtype=float)
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    confusion = table(["target \\ predicted", *classes],
                      [[c, *(f"{v:.2f}" for v in row)] for c, row in zip(classes, shares)])
    cards = []
    for row, pred in zip(result["worst"], worst_masks):
        i = row["index"]
        image_path, _ = samples.items[i]
        _, y = dataset[i]
        shown = np.asarray(read_image(image_path).resize(pred.shape[::-1]))
        truth = y.numpy().copy()
        truth[truth == info.ignore_index] = 0
        cards.append(f"<div class=card>{img(shown, 'image')}{img(overlay(shown, truth.astype(np.uint8)), 'truth')}"
                     f"{img(overlay(shown, pred.astype(np.uint8)), 'prediction')}<br>{esc(Path(image_path).name)}"
                     f" mIoU {row['miou']:.3f}</div>")
    legend = " ".join(f'<span style="background:rgb{tuple(int(v) for v in COLOURS[i % len(COLOURS)])};'
                      f'padding:0 6px">&nbsp;</span> {esc(c)}' for i, c in enumerate(classes))
    body = (f"<h1>Segmentation evaluation of {esc(run)}</h1><p>Data: {esc(data)} ({result['samples']} images). "
            f"mIoU <b>{result['miou']:.4f}</b> (classes absent from target and prediction left out), pixel accuracy "
            f"{result['pixel_acc']:.4f}, mean Dice {result['mean_dice']:.4f}.</p>"
            f"<h2 id=per-class>Per class</h2>{table(['class', 'IoU', 'Dice', 'pixels'], per_class)}"
            f"<h2 id=confusion>Confusion matrix (share of each target class's pixels)</h2>{confusion}"
            f"<h2 id=calibration>Calibration (every pixel not ignored)</h2>{calibration_section(result)}"
            f"<h2 id=worst>Lowest IoU: image | truth | prediction</h2><p>{legend}</p><div class=grid>"
            f"{''.join(cards)}</div>")
    css = ("body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1150px}table{border-collapse:collapse}"
           "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}.grid{display:flex;flex-wrap:wrap;"
           "gap:10px}.card{font-size:12px}.card img{width:128px;height:128px;image-rendering:pixelated;margin:1px}")
    return page(f"sft segmentation evaluation: {run.name}", body, css)
