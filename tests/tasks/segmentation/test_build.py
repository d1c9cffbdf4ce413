"""examples/segmentation/build.py on real Fashion-MNIST: file layout, image and mask formats, seeding, and refusals."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")
BUILD = Path(__file__).resolve().parents[3] / "examples" / "segmentation" / "build.py"
SIZES = {"train": 12, "val": 4, "test": 4}

pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="dataset-fashion-mnist is not installed")


@pytest.fixture(scope="module")
def builder():
    """The script as a module: examples/ is not a package."""
    spec = importlib.util.spec_from_file_location("segmentation_build", BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(builder, out: Path, seed: int = 0, overwrite: bool = False) -> dict:
    return builder.build(out, **SIZES, size=96, seed=seed, overwrite=overwrite)


def masks(out: Path) -> list[bytes]:
    return [p.read_bytes() for split in SIZES for p in sorted((out / split / "masks").glob("*.png"))]


def test_layout_and_formats(builder, tmp_path):
    out = tmp_path / "seg"
    summary = build(builder, out)
    assert (out / "classes.txt").read_text().splitlines() == ["background", *builder.CLASSES]
    assert json.loads((out / builder.MARKER).read_text())["seed"] == 0
    assert 1 <= summary["objects_per_image"] <= 4 and 0 < summary["background_share"] < 1
    for split, n in SIZES.items():
        images, labels = sorted((out / split / "images").glob("*.png")), sorted((out / split / "masks").glob("*.png"))
        assert len(images) == len(labels) == n and [p.name for p in images] == [p.name for p in labels]
        for image_path, mask_path in zip(images, labels):
            image, mask = Image.open(image_path), Image.open(mask_path)
            assert (image.mode, image.size, mask.mode, mask.size) == ("RGB", (96, 96), "L", (96, 96))
            values = np.unique(np.asarray(mask))
            assert values.min() >= 0 and values.max() <= 10 and values.max() > 0
    assert not [p for p in tmp_path.iterdir() if p.name != "seg"]  # no temporary folder left behind


def test_seeded(builder, tmp_path):
    build(builder, tmp_path / "a", seed=0)
    build(builder, tmp_path / "b", seed=0)
    build(builder, tmp_path / "c", seed=1)
    assert masks(tmp_path / "a") == masks(tmp_path / "b")
    assert masks(tmp_path / "a") != masks(tmp_path / "c")


def test_overwrite_only_its_own_folder(builder, tmp_path):
    out = tmp_path / "seg"
    build(builder, out, seed=0)
    with pytest.raises(builder.Refused, match="--overwrite"):
        build(builder, out, seed=1)
    assert json.loads((out / builder.MARKER).read_text())["seed"] == 0
    build(builder, out, seed=1, overwrite=True)
    assert json.loads((out / builder.MARKER).read_text())["seed"] == 1

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(builder.Refused, match="not written by this script"):
        build(builder, foreign, overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"] and (foreign / "keep.txt").read_text() == "mine"
    assert builder.main(["--train", "1", "--val", "0", "--test", "0", "--out", str(foreign), "--overwrite"]) == 2


def test_object_sides(builder, tmp_path):
    """--side sets the garments' size range (the marker records it); a range that does not fit is refused."""
    assert builder.main(["--train", "6", "--val", "0", "--test", "0", "--size", "32", "--side", "10", "12",
                         "--out", str(tmp_path / "small")]) == 0
    assert json.loads((tmp_path / "small" / builder.MARKER).read_text())["side"] == [10, 12]
    for path in (tmp_path / "small" / "train" / "masks").glob("*.png"):
        assert 0 < np.count_nonzero(np.asarray(Image.open(path))) <= 4 * 12 * 12  # at most 4 garments of 12 px
    for side, match in (((30, 20), "low <= high"), ((10, 40), "at least 40")):
        with pytest.raises(builder.Refused, match=match):
            builder.build(tmp_path / "bad", train=1, val=0, test=0, size=32, side=side)


def test_a_failed_build_leaves_the_previous_set_whole(builder, tmp_path, monkeypatch):
    """The set is written beside `out` and swapped in whole: a build that fails midway leaves the old set (marker
    and all) and no half-written folder that could look finished."""
    out = tmp_path / "seg"
    build(builder, out, seed=0)
    before = masks(out)

    def broken(*args):
        raise OSError("disk full")
    monkeypatch.setattr(builder, "composite", broken)
    with pytest.raises(OSError, match="disk full"):
        build(builder, out, seed=1, overwrite=True)
    assert json.loads((out / builder.MARKER).read_text())["seed"] == 0 and masks(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["seg"]
    with pytest.raises(OSError):
        build(builder, tmp_path / "new", seed=1)
    assert not (tmp_path / "new").exists()
