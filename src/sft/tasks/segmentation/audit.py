"""`sft audit` for masks: the images whose masks a model disagrees with, ranked, with the suspected pixels shown.

cleanlab's segmentation module judges (`cleanlab.segmentation`): confident learning over pixels flags the pixels
whose given class is unlikely. Images are ranked by the share of their pixels it flags rather than by cleanlab's
default softmin of self-confidence, which follows the few least confident pixels (a model's own uncertain borders
have them too); the softmin score is reported beside it.

The judging needs out-of-sample probabilities, and cross-fitting a dense model costs K trainings, so the audit scores
the finished run's model on the validation and test images, which it never trained on. Training masks are audited
by training a second run with train and val swapped. Ignored pixels take the model's own prediction as their label;
the probabilities lie in a memory-mapped file, never in memory as a whole.
"""

from __future__ import annotations

import csv
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sft.core.atomic import atomic_write_dir, atomic_write_json, atomic_write_text
from sft.core.html import esc, img, page
from sft.core.rundir import check_replaceable, mark
from sft.data.loaders import eval_batches
from sft.data.samples import Samples, read_image
from sft.errors import UserError
from sft.tasks.label_audit import CSV_COLUMNS  # the columns every task's suspects.csv has
from sft.tasks.segmentation.data import eval_dataset
from sft.tasks.segmentation.report import overlay

SPLITS = ("val", "test")
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1150px}.grid{display:flex;flex-wrap:wrap;
gap:10px}.card{font-size:12px;max-width:400px}.card img{width:128px;height:128px;image-rendering:pixelated;margin:1px}
.id{color:#666;overflow-wrap:anywhere}"""


@torch.inference_mode()
def mask_issues(model: nn.Module, dataset, num_classes: int, ignore_index: int, *, batch_size: int = 32) -> dict:
    """Per image of `dataset` ((image, mask) pairs): its label-quality score (0 worst .. 1), the pixels cleanlab
    flags (a boolean (N, H, W) array), and the given and predicted class of every pixel."""
    from cleanlab.segmentation.filter import find_label_issues  # deferred: cleanlab loads in seconds
    from cleanlab.segmentation.rank import get_label_quality_scores

    device = next(model.parameters()).device
    _, first = dataset[0]
    n, (h, w) = len(dataset), tuple(first.shape)
    given = np.zeros((n, h, w), np.int16)  # classes and ignore_index are below 256
    with tempfile.TemporaryDirectory(prefix="sft-audit-") as folder:
        probs = np.lib.format.open_memmap(Path(folder) / "probs.npy", "w+", np.float32, (n, num_classes, h, w))
        start = 0
        for x, y in eval_batches(dataset, batch_size, None, False, ""):
            p = model(x.to(device)).float().softmax(1).cpu()
            probs[start:start + len(x)] = p.numpy()
            given[start:start + len(x)] = y.numpy()
            start += len(x)
        predicted = probs.argmax(1).astype(np.int16)
        labels = np.where(given == ignore_index, predicted, given)  # ignored: the model's own class, never flagged
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flagged = find_label_issues(labels, probs, n_jobs=1, verbose=False)
            quality, _ = get_label_quality_scores(labels, probs, method="softmin", verbose=False)
    return {"quality": np.asarray(quality, np.float64), "flagged": flagged, "given": given, "predicted": predicted}


def suspects_of(split: str, samples: Samples, found: dict, classes: list[str]) -> list[dict]:
    """One row per image with flagged pixels (score: the share flagged, higher is more suspicious): the class most
    of its flagged pixels were given, the one the model sees there, and cleanlab's softmin label quality."""
    rows = []
    for i in np.flatnonzero(found["flagged"].reshape(len(samples), -1).any(1)):
        where = found["flagged"][i]
        given = np.bincount(found["given"][i][where], minlength=len(classes)).argmax()
        seen = np.bincount(found["predicted"][i][where], minlength=len(classes)).argmax()
        count = int(where.sum())
        rows.append({"split": split, "sample": samples.ids[i], "index": int(i), "kind": "label_issue",
                     "given_label": classes[given], "suggested_label": classes[seen],
                     "score": count / where.size,
                     "detail": f"{count} pixels the model puts in another class; label quality (softmin) "
                               f"{found['quality'][i]:.3f}"})
    return rows


def audit_masks(recipe, splits, model: nn.Module, info, out: Path, *, overwrite: bool, batch_size: int = 32,
                shown: int = 48) -> dict:
    """Audit the validation and test masks of `splits` with the run's `model` (`info`: its model.json) and write
    audit.json, suspects.csv and audit.html (the `shown` worst images) to `out`, swapped in whole; returns the
    summary."""
    classes = info.classes
    check_replaceable(out, "audit", overwrite=overwrite)
    if list(splits.classes) != list(classes):
        raise UserError(f"{recipe.run_dir}: the run's classes {classes} are not the recipe's data's "
                        f"{list(splits.classes)}")
    rows, found, samples = [], {}, {}
    for split in SPLITS:
        if getattr(splits, split) is None:
            continue
        samples[split] = getattr(splits, split)
        found[split] = mask_issues(model, eval_dataset(info, samples[split]), len(classes), info.ignore_index,
                                   batch_size=batch_size)
        rows += suspects_of(split, samples[split], found[split], classes)
    rows.sort(key=lambda r: -r["score"])
    cards = [_card(r, samples[r["split"]], found[r["split"]], info.ignore_index) for r in rows[:shown]]
    audited = {split: len(s) for split, s in samples.items()}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "score": f"{r['score']:.6g}"} for r in rows)

    def write(folder: str) -> None:
        folder = Path(folder)
        atomic_write_json(folder / "audit.json", {"run_dir": str(recipe.run_dir), "classes": classes,
                                                  "audited": audited, "suspects": rows})
        atomic_write_text(folder / "suspects.csv", buffer.getvalue())
        atomic_write_text(folder / "audit.html", _html(recipe, audited, rows, cards))
        mark(folder, "audit")
    atomic_write_dir(out, write)
    return {"audited": audited, "suspects": len(rows), "worst_score": rows[0]["score"] if rows else 0.0}


def _card(row: dict, samples: Samples, found: dict, ignore_index: int) -> str:
    """image | its mask | the flagged pixels in red over the image, at the model's resolution."""
    i = row["index"]
    given, flagged = found["given"][i], found["flagged"][i]
    shown = np.asarray(read_image(samples.items[i][0]).resize(given.shape[::-1]))
    truth = np.where(given == ignore_index, 0, given).astype(np.uint8)  # ignored pixels: unshaded
    red = shown.copy()
    red[flagged] = (0.4 * red[flagged] + 0.6 * np.array([255, 0, 0])).astype(np.uint8)
    return (f"<div class=card>{img(shown, 'image')}{img(overlay(shown, truth), 'given mask')}"
            f"{img(red, 'suspected pixels')}<br><b>{row['score']:.1%} flagged</b> {esc(row['given_label'])} &rarr; "
            f"{esc(row['suggested_label'])}<br>{esc(row['detail'])}<br><span class=id>{esc(row['split'])}/"
            f"{esc(Path(row['sample']).name)}</span></div>")


def _html(recipe, audited: dict, rows: list[dict], cards: list[str]) -> str:
    counts = ", ".join(f"{n} {esc(s)}" for s, n in audited.items())
    body = (f"<h1>Mask audit</h1><p>The masks of {counts} images scored by the finished run in "
            f"{esc(recipe.run_dir)} (images it never trained on), with cleanlab's segmentation module. "
            f"<b>{len(rows)}</b> images have pixels it flags, ranked by the share flagged (the score). Full list in "
            f"suspects.csv.</p><h2>Worst {len(cards)}: image | given mask | suspected pixels (red)</h2>"
            f"<div class=grid>{''.join(cards)}</div>")
    return page("sft audit (masks)", body, CSS)
