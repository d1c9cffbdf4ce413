"""`sft audit` of regression targets: planted wrong angles rank among the suspects."""

import csv
import json

import numpy as np

from sft.data.samples import Samples
from sft.tasks.regression.audit import audit_targets
from tests.conftest import edited_copy, sft

PLANTED = [5, 17, 40, 77, 101, 150]  # train rows whose angle is turned by 90°


def _turned(angle: float) -> float:
    return angle - 90 if angle > 0 else angle + 90


def test_audit_targets_flags_wrong_values_on_informative_features():
    """Features that encode the angle linearly (plus noise dimensions): the turned values are the suspects."""
    rng = np.random.default_rng(0)
    angle = rng.uniform(-60, 60, 200)
    given = angle.copy()
    given[PLANTED] = [_turned(a) for a in angle[PLANTED]]
    x = np.column_stack([angle / 60 + rng.normal(0, 0.05, 200), rng.normal(0, 1, (200, 14))])
    samples = {"train": Samples(np.zeros((200, 1)), None, ["angle"], [f"r{i}" for i in range(200)],
                                targets=given[:, None].astype(np.float32))}
    rows, summary = audit_targets(samples, {"train": x.astype(np.float32)}, seed=0)
    found = {r["index"] for r in rows}
    assert found == set(PLANTED)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert rows[0]["given_label"].startswith("angle=") and summary["suspects"]["angle"] == len(rows)


def test_sft_audit_ranks_turned_angles_among_suspects(angles, tmp_path):
    """End to end on the rotated garments. The tiny backbone's random weights barely predict the angle, so the turned
    angles are caught as values the out-of-fold probe cannot explain (out of the data's range), not by the features."""
    planted = []

    def turn(rows):  # the first six angles over 30° turned by 90°: 120° to 150°, outside [-60°, 60°]
        planted.extend([i for i, row in enumerate(rows) if float(row["angle"]) > 30][:6])
        for i in planted:
            rows[i]["angle"] = f"{float(rows[i]['angle']) + 90:.3f}"
    data = edited_copy(angles, tmp_path, turn)
    recipe = tmp_path / "angles.yaml"
    recipe.write_text("\n".join([
        "task: image-regression", "data:", *(f"  {s}: {data / s}.csv" for s in ("train", "val", "test")),
        "  target_columns: [angle]", "  image_size: 32", "  batch_size: 32", "model:",
        "  backbone: timm/test_efficientnet", "  weights: none", "trainer:", "  progress: false",
        f"run_dir: {tmp_path / 'run'}", f"cache_dir: {tmp_path / 'cache'}"]) + "\n")
    result = sft("audit", recipe, "--out", tmp_path / "audit")
    assert result.exit_code == 0, result.output
    out = tmp_path / "audit"
    assert (out / "audit.html").read_text().count("class=card") > 0
    with open(out / "suspects.csv", newline="") as f:
        suspects = list(csv.DictReader(f))
    summary = json.loads((out / "audit.json").read_text())
    hits = {int(r["index"]) for r in suspects if r["split"] == "train"} & set(planted)
    chance = len(planted) * len(suspects) / summary["samples"]  # planted rows a random pick of as many would hold
    print(f"{len(hits)} of {len(planted)} planted among {len(suspects)} suspects (chance {chance:.2f})")
    assert len(hits) >= 3 and len(hits) > 3 * chance
    again = sft("audit", recipe, "--out", tmp_path / "audit2", "--also", "timm/test_resnet@none")
    assert again.exit_code == 2 and "--also" in again.output
