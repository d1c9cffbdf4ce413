"""The segmentation datasets people bring: Pascal VOC palette masks (indices, 255 ignored), a Cityscapes tree with
its label ids mapped to train ids, a label map on any layout, and a folder in no layout named as such."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sft.errors import UserError
from sft.models.backbone import Preprocess
from sft.recipe import validate
from sft.tasks.segmentation.data import PairDataset, joint_transforms, label_table, read_pairs
from sft.tasks.segmentation.layouts import CITYSCAPES_CLASSES, VOC_CLASSES
from sft.tasks.segmentation.recipe import SegmentationRecipe
from sft.tasks.segmentation.task import Segmentation
from tests.conftest import sft

PRE = Preprocess((32, 32), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)


def picture(path: Path, size: int, seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def palette_png(path: Path, mask: np.ndarray):
    """A VOC-style palette PNG: the pixel values are the class indices, the palette only colours them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8), "P")
    image.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    image.save(path)


def voc_mask(size: int, value: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = value
    mask[size // 4 - 1, :] = 255  # the border VOC draws around objects
    return mask


def voc_set(root: Path, size=32, train=3, val=2) -> Path:
    names = [f"2007_{i:06d}" for i in range(train + val)]
    for i, name in enumerate(names):
        picture(root / "JPEGImages" / f"{name}.jpg", size, i)
        palette_png(root / "SegmentationClass" / f"{name}.png", voc_mask(size, [15, 8, 1, 20][i % 4]))
    picture(root / "JPEGImages" / "2007_999999.jpg", size)  # an image without a mask: not a segmentation sample
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names[:train]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names[train:]) + "\n")
    return root


def data_section(**data) -> SegmentationRecipe:
    return validate({"task": "segmentation", "data": data}, SegmentationRecipe)


def test_voc_palette_masks_are_indices_with_255_ignored(tmp_path):
    root = voc_set(tmp_path / "VOC2012")
    recipe = data_section(train=str(root))
    d = recipe.data
    assert d.classes == VOC_CLASSES and len(d.classes) == 21 and d.label_map is None
    assert (d.train.split, d.val.split, d.test) == ("train", "val", None)
    splits = Segmentation().load_splits(recipe)
    assert (len(splits.train), len(splits.val)) == (3, 2)
    _, mask = PairDataset(splits.train, joint_transforms(PRE, 32, "none", 255)[1], None)[0]
    assert set(np.unique(mask.numpy())) == {0, 15, 255}  # person stays 15, not a colour; the border is ignored
    listed = read_pairs(root / "ImageSets" / "Segmentation" / "val.txt", "auto", VOC_CLASSES, 255, None)
    assert len(listed) == 2
    assert data_section(train=str(root), classes=["a", "b"]).data.classes == ["a", "b"]  # given classes win


def cityscapes_set(root: Path, size=32) -> Path:
    for split, city, n in (("train", "aachen", 2), ("val", "lindau", 1)):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            picture(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", size, i)
            ids = np.zeros((size, size), np.uint8)  # 0: unlabeled, not in the map
            ids[: size // 2] = 7  # road -> 0
            ids[size // 2:, : size // 2] = 26  # car -> 13
            path = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids, "L").save(path)
    return root


def test_cityscapes_ids_become_its_19_train_ids(tmp_path):
    root = cityscapes_set(tmp_path / "cityscapes")
    recipe = data_section(train=str(root))
    d = recipe.data
    assert d.classes == CITYSCAPES_CLASSES and d.label_map[7] == 0 and d.label_map[26] == 13 and 0 not in d.label_map
    assert (d.train.split, d.val.split, d.test) == ("train", "val", None)
    splits = Segmentation().load_splits(recipe)
    assert (len(splits.train), len(splits.val)) == (2, 1)
    _, mask = PairDataset(splits.train, joint_transforms(PRE, 32, "none", 255)[1], None,
                          label_table(d.label_map, 255))[0]
    mask = mask.numpy()
    assert (mask[:16] == 0).all() and (mask[16:, :16] == 13).all() and (mask[16:, 16:] == 255).all()
    one = read_pairs(root / "leftImg8bit" / "val", "auto", CITYSCAPES_CLASSES, 255, None, d.label_map)
    assert len(one) == 1 and one.items[0][1].endswith("lindau_000000_000019_gtFine_labelIds.png")
    raw = data_section(train=str(root), classes=[f"id{i}" for i in range(34)], label_map=None).data
    assert raw.label_map is None  # an explicit null keeps the raw ids


def test_a_label_map_on_an_images_and_masks_folder(tmp_path):
    for name, value in (("a", 5), ("b", 9)):
        picture(tmp_path / "images" / f"{name}.png", 32)
        mask = np.full((32, 32), 3, np.uint8)  # 3: not in the map -> ignored
        mask[8:24, 8:24] = value
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask, "L").save(tmp_path / "masks" / f"{name}.png")
    d = data_section(train=str(tmp_path), classes=["bg", "five", "nine"], label_map={5: 1, 9: 2}).data
    samples = read_pairs(tmp_path, "auto", d.classes, 255, None, d.label_map)
    _, mask = PairDataset(samples, joint_transforms(PRE, 32, "none", 255)[1], None, label_table(d.label_map, 255))[1]
    assert set(np.unique(mask.numpy())) == {2, 255}
    with pytest.raises(UserError, match="mask values \\[3, 5\\] are not classes"):
        read_pairs(tmp_path, "auto", d.classes, 255, None)  # without the map the raw ids are out of range
    with pytest.raises(UserError, match="not both"):
        data_section(train=str(tmp_path), classes=["bg", "x"], label_map={1: 1}, palette={"bg": [0, 0, 0],
                                                                                            "x": [1, 1, 1]})


def test_a_folder_in_no_layout_names_every_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.md").write_text("hello")
    with pytest.raises(UserError) as e:
        Segmentation().load_splits(data_section(train=str(tmp_path / "stuff")))
    for layout in ("images/ + masks/", "CSV manifest", "Pascal VOC", "Cityscapes"):
        assert layout in str(e.value)
    root = voc_set(tmp_path / "voc")
    (root / "SegmentationClass" / "2007_000001.png").unlink()
    with pytest.raises(UserError, match="train.txt line 2: no mask"):
        Segmentation().load_splits(data_section(train=str(root)))


def test_training_on_a_voc_folder(tmp_path):
    """The whole path through `sft train`: VOC's 21 classes by default, its ImageSets as the splits."""
    root = voc_set(tmp_path / "VOC2012", size=64, train=6, val=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("\n".join([
        "task: segmentation", "data:", f"  train: {root}", "  image_size: 64", "  batch_size: 8", "model:",
        "  decoder: fpn", "  decoder_channels: 64", "strategy:", "  name: linear-probe", "trainer:", "  epochs: 1",
        "  progress: false", f"run_dir: {tmp_path / 'run'}", f"cache_dir: {tmp_path / 'cache'}"]) + "\n")
    result = sft("train", recipe)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["val_iou"]) == VOC_CLASSES and 0 <= metrics["val_miou"] <= 1
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["classes"] == VOC_CLASSES
