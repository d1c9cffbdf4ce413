"""examples/detection/build.py on real Fashion-MNIST: both formats agree, boxes are tight, seeding, refusals."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")
BUILD = Path(__file__).resolve().parents[3] / "examples" / "detection" / "build.py"
SIZES = {"train": 12, "val": 4, "test": 4}

pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="dataset-fashion-mnist is not installed")


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("detection_build", BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coco_and_yolo_hold_the_same_tight_boxes(builder, tmp_path):
    out = tmp_path / "det"
    summary = builder.build(out, **SIZES, size=96, seed=0)
    assert (out / "classes.txt").read_text().splitlines() == builder.CLASSES and (out / "data.yaml").is_file()
    assert 0 < summary["boxes_per_image"] <= 6
    coco = json.loads((out / "train" / "annotations.json").read_text())
    assert len(coco["images"]) == 12 and [c["id"] for c in coco["categories"]] == list(range(1, 11))
    for entry in coco["images"]:
        image = np.asarray(Image.open(out / "train" / entry["file_name"]))
        assert image.shape == (96, 96, 3)
        anns = [a for a in coco["annotations"] if a["image_id"] == entry["id"]]
        rows = (out / "train" / "labels" / (Path(entry["file_name"]).stem + ".txt")).read_text().splitlines()
        assert len(rows) == len(anns)
        for a, row in zip(anns, rows):
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x + w <= 96 and y + h <= 96
            cls, cx, cy, nw, nh = row.split()
            assert int(cls) == a["category_id"] - 1
            assert np.allclose([float(cx) * 96, float(cy) * 96, float(nw) * 96, float(nh) * 96],
                               [x + w / 2, y + h / 2, w, h], atol=1e-3)
            assert image[y:y + h, x:x + w].max() > 80  # a garment is there (the background is 10-70 grey)


def test_a_lone_object_box_is_tight(builder, monkeypatch):
    monkeypatch.setattr(builder._seg, "NOISE", 0.0)
    monkeypatch.setattr(builder, "OBJECTS", (1, 1))
    monkeypatch.setattr(builder, "EMPTY", 0.0)
    images, labels = builder.read_fashion("t10k")
    rng = np.random.default_rng(0)
    for _ in range(5):
        image, boxes = builder.composite(rng, images, labels, 0, 100, 96)
        (x0, y0, x1, y1, label), = boxes
        changed = np.argwhere((image != image[0, 0]).any(2))  # the pixels the garment painted
        assert (changed.min(0).tolist(), (changed.max(0) + 1).tolist()) == ([y0, x0], [y1, x1])


def test_seeded_with_negatives(builder, tmp_path):
    a = builder.build(tmp_path / "a", train=40, val=0, test=0, size=96, seed=0)
    builder.build(tmp_path / "b", train=40, val=0, test=0, size=96, seed=0)
    builder.build(tmp_path / "c", train=40, val=0, test=0, size=96, seed=1)
    read = lambda p: (p / "train" / "annotations.json").read_text()  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b") != read(tmp_path / "c")
    assert a["empty_images"] >= 1


def test_overwrite_only_its_own_folder(builder, tmp_path):
    out = tmp_path / "det"
    builder.build(out, **SIZES, size=96, seed=0)
    with pytest.raises(builder.Refused, match="--overwrite"):
        builder.build(out, **SIZES, size=96, seed=1)
    builder.build(out, **SIZES, size=96, seed=1, overwrite=True)
    assert json.loads((out / builder.MARKER).read_text())["seed"] == 1
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert builder.main(["--train", "1", "--val", "0", "--test", "0", "--out", str(foreign), "--overwrite"]) == 2
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    with pytest.raises(builder.Refused, match="--size must be at least 72"):  # the shared refusals, its own sides
        builder.build(tmp_path / "small", **SIZES, size=64)
    with pytest.raises(builder.Refused, match="must not be negative"):
        builder.build(tmp_path / "small", train=-1, val=0, test=0, size=96)
