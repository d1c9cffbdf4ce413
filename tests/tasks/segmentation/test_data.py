"""Images with masks: pairs found by name or by CSV, every mask checked when the split is read, joint transforms."""

import numpy as np
import pytest
import torch
from PIL import Image

from sft.errors import UserError
from sft.models.backbone import Preprocess
from sft.tasks.segmentation.data import PairDataset, joint_transforms, palette_lookup, read_pairs

CLASSES = ["background", "square", "disc"]
PRE = Preprocess((64, 64), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)


def write(folder, name, mask: np.ndarray, size=None, rgb=False):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size or mask.shape[:2]
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(folder / "images" / f"{name}.jpg")
    Image.fromarray(mask.astype(np.uint8), "RGB" if rgb else "L").save(folder / "masks" / f"{name}.png")


def square(value=1, size=32):
    mask = np.zeros((size, size), np.uint8)
    mask[8:24, 8:24] = value
    return mask


def test_pairs_by_name_and_by_csv(tmp_path):
    write(tmp_path, "a", square(1))
    write(tmp_path, "b", square(2))
    samples = read_pairs(tmp_path, "auto", CLASSES, 255, None)
    assert len(samples) == 2 and samples.kind == "segmentation" and samples.items[0][1].endswith("a.png")
    (tmp_path / "list.csv").write_text("image,mask\nimages/b.jpg,masks/b.png\n")
    assert [p[0].endswith("b.jpg") for p in read_pairs(tmp_path / "list.csv", "auto", CLASSES, 255, None).items] == \
        [True]


@pytest.mark.parametrize("make, message", [
    (lambda d: (write(d, "a", square()), (d / "masks" / "a.png").unlink()), "no mask for this image"),
    (lambda d: write(d, "a", square(), size=(32, 40)), "mask is 32x32 but its image"),
    (lambda d: write(d, "a", square(7)), "mask values [7] are not classes 0..2"),
    (lambda d: write(d, "a", np.stack([square(200)] * 3, -1), rgb=True), "an RGB mask; give data.palette"),
    (lambda d: ((d / "images").mkdir(), (d / "masks").mkdir()), "no images"),
    (lambda d: (d / "images").mkdir(), "expected the subfolders images/ and masks/"),
])
def test_bad_data_is_named(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(UserError) as e:
        read_pairs(tmp_path, "folder", CLASSES, 255, None)
    assert message in str(e.value) and str(tmp_path) in str(e.value)


def test_ignore_index_and_palette_masks(tmp_path):
    mask = square(1)
    mask[0, :] = 255
    write(tmp_path / "plain", "a", mask)
    assert len(read_pairs(tmp_path / "plain", "folder", CLASSES, 255, None)) == 1
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[8:24, 8:24] = (255, 0, 0)
    write(tmp_path / "rgb", "a", rgb, rgb=True)
    palette = {"background": [0, 0, 0], "square": [255, 0, 0], "disc": [0, 0, 255]}
    samples = read_pairs(tmp_path / "rgb", "folder", CLASSES, 255, palette)
    _, mask_out = PairDataset(samples, joint_transforms(PRE, 32, "none", 255)[1], palette_lookup(palette, CLASSES))[0]
    assert mask_out.unique().tolist() == [0, 1] and mask_out[16, 16] == 1
    with pytest.raises(UserError, match="not in data.palette"):
        read_pairs(tmp_path / "rgb", "folder", CLASSES, 255, {**palette, "square": [0, 255, 0]})


def test_image_and_mask_move_together(tmp_path):
    write(tmp_path, "a", square(1, size=64))
    samples = read_pairs(tmp_path, "folder", CLASSES, 255, None)
    train, _ = joint_transforms(PRE, 32, "light", 255)
    torch.manual_seed(0)
    for _ in range(5):  # crops and flips: the mask stays made of class indices, at the image's size
        x, y = PairDataset(samples, train, None)[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.shape == (32, 32) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 1}
