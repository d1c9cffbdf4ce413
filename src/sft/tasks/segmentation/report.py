"""report.html of a segmentation evaluation (scores, per-class IoU, the confusion matrix, calibration, the worst
images drawn with their predicted masks), and the colour overlay of a mask that the report, `sft predict` and the
mask audit draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sft.core.html import esc, img, page, table
from sft.data.samples import Samples, read_image
from sft.tasks.segmentation.calibration import calibration_section

COLOURS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0]], dtype=np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    colours = COLOURS[mask % len(COLOURS)]
    shown = np.where(mask[..., None] > 0, (1 - alpha) * image + alpha * colours, image)
    return shown.astype(np.uint8)


def render_report(run: Path, data: str, info, samples: Samples, dataset, result,
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
