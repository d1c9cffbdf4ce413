"""`sft audit` of masks: garments erased from a few validation masks are the images ranked first.

The composites are binarised (background / garment) for this test: a model that learns that in seconds sees every
garment a mask loses, where the eleven classes would take a bench's training to tell apart."""

import csv
import shutil

import numpy as np
from PIL import Image

from tests.conftest import sft

PLANTED = 2


def binary_set(source, folder):
    """The composites' images with masks of 0 (background) and 1 (any garment)."""
    for split in ("train", "val"):
        shutil.copytree(source / split / "images", folder / split / "images")
        (folder / split / "masks").mkdir()
        for path in sorted((source / split / "masks").glob("*.png")):
            Image.fromarray((np.array(Image.open(path)) > 0).astype(np.uint8)).save(folder / split / "masks" /
                                                                                  path.name)
    (folder / "classes.txt").write_text("background\ngarment\n")
    return folder


def erase(folder):
    """The PLANTED masks of `folder` with the most garment pixels lose their garments (all labelled background): a
    mistake large enough that the ranking does not hang on how a short training's floating point rounded."""
    masks = sorted((folder / "masks").glob("*.png"), key=lambda m: -int((np.array(Image.open(m)) > 0).sum()))
    for path in masks[:PLANTED]:
        Image.fromarray(np.zeros_like(np.array(Image.open(path)))).save(path)
    return sorted(m.stem for m in masks[:PLANTED])


def test_erased_garments_rank_first(segmentation_set, tmp_path):
    data = binary_set(segmentation_set, tmp_path / "data")
    path = tmp_path / "seg.yaml"
    path.write_text("\n".join([
        "task: segmentation", "data:", f"  train: {data / 'train'}", f"  val: {data / 'val'}", "  image_size: 32",
        "  augment: light", "  batch_size: 8", "model:", "  backbone: timm/test_efficientnet", "  weights: none",
        "  decoder: unet", "  decoder_channels: 32", "strategy:", "  name: full", "optim:", "  lr: 0.01", "trainer:",
        "  epochs: 8", "  progress: false", f"run_dir: {tmp_path / 'run'}", f"cache_dir: {tmp_path / 'cache'}"]) + "\n")
    assert sft("train", path).exit_code == 0
    shutil.copytree(data / "val", tmp_path / "planted")
    planted = erase(tmp_path / "planted")
    out = tmp_path / "audit"
    result = sft("audit", path, f"data.val={tmp_path / 'planted'}", "--out", out)  # the run trained on clean masks
    assert result.exit_code == 0, result.output
    with open(out / "suspects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    top = sorted(r["sample"].rsplit("/", 1)[-1].rsplit(".", 1)[0] for r in rows[:PLANTED])
    assert top == planted and all(r["given_label"] == "background" for r in rows[:PLANTED]), rows[:4]
    page = (out / "audit.html").read_text()
    assert page.count("<img") == 3 * min(len(rows), 48)  # image | given mask | suspected pixels
    result = sft("audit", path, "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_a_mask_audit_needs_a_finished_run(segmentation_set, tmp_path):
    path = tmp_path / "seg.yaml"
    path.write_text(f"task: segmentation\ndata:\n  train: {segmentation_set / 'train'}\nrun_dir: {tmp_path / 'run'}\n")
    result = sft("audit", path)
    assert result.exit_code == 2 and "no finished run" in result.output and "sft train" in result.output
