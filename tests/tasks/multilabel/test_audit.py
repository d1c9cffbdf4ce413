"""`sft audit` of multi-label data: planted wrong label sets rank among the suspects."""

import csv
import json

import numpy as np

from sft.data.samples import Samples
from sft.tasks.multilabel.audit import audit_label_sets
from tests.conftest import edited_copy, sft


def test_audit_label_sets_flags_changed_sets_on_informative_features():
    """Features that encode the true labels (plus noise dimensions): most suspects are changed label sets (chance: 6
    of 200 rows)."""
    rng = np.random.default_rng(0)
    n, c = 200, 5
    y = (rng.random((n, c)) < 0.4).astype(np.float32)
    y[y.sum(1) == 0, 0] = 1
    x = np.column_stack([y * 3 + rng.normal(0, 0.5, (n, c)), rng.normal(0, 1, (n, 10))]).astype(np.float32)
    given, planted = y.copy(), [3, 20, 45, 90, 130, 170]
    for k, i in enumerate(planted):  # a label added where absent, or dropped where present and not the only one
        j = next(j for j in range(k, k + c) if not given[i, j % c] or given[i].sum() > 1) % c
        given[i, j] = 1 - given[i, j]
    samples = {"train": Samples(np.zeros((n, 1)), None, [f"l{k}" for k in range(c)], [f"r{i}" for i in range(n)],
                                targets=given)}
    rows, summary = audit_label_sets(samples, {"train": x}, seed=0)
    found = {r["index"] for r in rows}
    assert len(found & set(planted)) >= 3 and len(found - set(planted)) <= 2
    assert summary["out_of_fold_map"] > 0.9 and summary["suspects"] == len(rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def test_sft_audit_of_changed_mosaics(mosaics, tmp_path):
    """End to end on the garment mosaics: the files, the summary, no second audit into the same folder. The tiny
    backbone's random weights barely see the garments, so whether the changed sets are found is the test above's."""
    def change(rows):  # 10 of 120: a label dropped (when there are several) or one added
        classes = sorted({label for row in rows for label in row["labels"].split("|")})
        for i in range(0, 120, 12):
            labels = rows[i]["labels"].split("|")
            absent = [c for c in classes if c not in labels]
            rows[i]["labels"] = "|".join(labels[1:] if len(labels) > 1 or not absent else labels + absent[:1])
    data = edited_copy(mosaics, tmp_path, change)
    recipe = tmp_path / "mosaics.yaml"
    recipe.write_text("\n".join([
        "task: image-multilabel", "data:", *(f"  {s}: {data / s}.csv" for s in ("train", "val", "test")),
        "  image_size: 32", "  batch_size: 32", "model:", "  backbone: timm/test_efficientnet", "  weights: none",
        "trainer:", "  progress: false", f"run_dir: {tmp_path / 'run'}", f"cache_dir: {tmp_path / 'cache'}"]) + "\n")
    result = sft("audit", recipe, "--out", tmp_path / "audit")
    assert result.exit_code == 0, result.output
    out = tmp_path / "audit"
    assert "Dataset audit" in (out / "audit.html").read_text()
    with open(out / "suspects.csv", newline="") as f:
        suspects = list(csv.DictReader(f))
    summary = json.loads((out / "audit.json").read_text())
    assert summary["samples"] == 180 and summary["suspects"] == len(suspects) == len(summary["suspects_rows"])
    assert suspects and all(r["kind"] == "label_issue" and r["split"] in ("train", "val") for r in suspects)
    assert "out_of_fold_map" in result.output
    assert sft("audit", recipe, "--out", out).exit_code == 2
