"""report.html of a detection evaluation (scores, per-class AP, precision-recall curves, the confusions at IoU 0.5,
the worst images drawn with their boxes), and the drawing of boxes on an image that the report and `sft predict`
share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.utils import draw_bounding_boxes

from sft.core.html import esc, img, page, table
from sft.tasks.detection.data import DetectionSamples


def save_png(image: np.ndarray, path: str) -> None:
    from PIL import Image
    Image.fromarray(image).save(path, format="PNG")


def draw(image: torch.Tensor, boxes: torch.Tensor, labels: list[str] | None, colour: str) -> np.ndarray:
    """An RGB uint8 (H, W, 3) picture of a uint8 (3, H, W) image with its boxes."""
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if len(boxes):
        image = draw_bounding_boxes(image, boxes.float(), labels=labels, colors=colour, width=1)
    return image.permute(1, 2, 0).numpy()


def render_report(run: Path, data: str, info, samples: DetectionSamples, dataset,
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
        x, target = dataset[i]  # the image again; its predictions are the evaluation's, the model does not run here
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
