"""COCO and YOLO readers: negatives kept, every mistake named with its file and annotation id or line, box-aware
transforms that keep boxes and labels together."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sft.errors import UserError
from sft.tasks.detection.data import BoxDataset, box_transforms, collate, read_detection

CLASSES = ["cat", "dog"]


def image(folder, name, size=(40, 30)):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(folder / "images" / name)


def coco(folder, annotations, categories=({"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}), images=("a.png",)):
    for name in images:
        image(folder, name)
    data = {"images": [{"id": i + 1, "file_name": f"images/{n}", "width": 40, "height": 30}
                       for i, n in enumerate(images)],
            "annotations": [{"id": i + 1, "image_id": 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)],
            "categories": list(categories)}
    (folder / "instances.json").write_text(json.dumps(data))
    return folder / "instances.json"


def yolo(folder, labels: dict[str, str], images=("a.png", "b.png"), classes=True):
    folder.mkdir(parents=True, exist_ok=True)
    for name in images:
        image(folder, name)
    (folder / "labels").mkdir(exist_ok=True)
    for stem, text in labels.items():
        (folder / "labels" / f"{stem}.txt").write_text(text)
    if classes:
        (folder / "classes.txt").write_text("cat\ndog\n")
    return folder


def test_coco_and_yolo_read_the_same_boxes_and_keep_negatives(tmp_path):
    path = coco(tmp_path / "c", [{"category_id": 2, "bbox": [4, 6, 10, 12]}], images=("a.png", "b.png"))
    c = read_detection(path, "auto", None)
    y = read_detection(yolo(tmp_path / "y", {"a": "1 0.225 0.4 0.25 0.4\n", "b": ""}), "auto", None)
    for s in (c, y):
        assert s.classes == CLASSES and len(s) == 2 and s.negatives == 1
        assert np.allclose(s.boxes[0], [[4, 6, 14, 18]]) and s.box_labels[0].tolist() == [1]
    assert read_detection(tmp_path / "c", "auto", None).classes == CLASSES  # a folder with one .json is COCO
    (tmp_path / "y2").mkdir()
    (tmp_path / "y2" / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    assert read_detection(yolo(tmp_path / "y2", {"a": "0 0.5 0.5 0.2 0.2\n"}, classes=False), "yolo",
                          None).classes == CLASSES


@pytest.mark.parametrize("annotation, message", [
    ({"category_id": 1, "bbox": [30, 20, 20, 5]}, "annotation id 1: bbox [30, 20, 20, 5] lies outside its 40x30"),
    ({"category_id": 1, "bbox": [4, 3, 20, 15]}, None),  # inside either way: fine
    ({"category_id": 1, "bbox": [12, 10, 30, 25]}, "it looks like [x1, y1, x2, y2] (xyxy)"),
    ({"category_id": 1, "bbox": [4, 3, 0, 5]}, "annotation id 1: bbox [4, 3, 0, 5] has a non-positive width"),
    ({"category_id": 7, "bbox": [4, 3, 5, 5]}, "annotation id 1: unknown category id 7 (known: [1, 2])"),
    ({"category_id": 1, "bbox": [4, 3, 5, 5], "image_id": 9}, "annotation id 1: image_id 9 is not in"),
    ({"category_id": 1}, "annotation id 1: expected \"bbox\": [x, y, width, height] (4 numbers), got None"),
    ({"category_id": 1, "bbox": [4, 3, 5]}, "annotation id 1: expected \"bbox\": [x, y, width, height]"),
])
def test_coco_mistakes_are_named(tmp_path, annotation, message):
    path = coco(tmp_path, [annotation])
    if message is None:
        assert len(read_detection(path, "coco", None)) == 1
        return
    with pytest.raises(UserError) as e:
        read_detection(path, "coco", None)
    assert message in str(e.value) and str(path) in str(e.value)


def test_coco_entries_without_their_keys_are_named(tmp_path):
    path = coco(tmp_path / "a", [], categories=({"id": 1},))
    with pytest.raises(UserError, match="category 0 .* needs an \"id\" and a \"name\""):
        read_detection(path, "coco", None)
    path = coco(tmp_path / "b", [])
    data = json.loads(path.read_text())
    del data["images"][0]["id"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="image entry 0 .* has no \"id\"") as e:
        read_detection(path, "coco", None)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("2 0.5 0.5 0.2 0.2", "a.txt line 1: class 2 is not one of 0..1"),
    ("0 20 15 8 6", "a.txt line 1: coordinates [20.0, 15.0, 8.0, 6.0] are not normalised"),
    ("0 0.2 0.3 0.6 0.7", "it looks like x1 y1 x2 y2 (xyxy); YOLO wants cx cy w h"),
    ("0 0.5 0.5 0 0.2", "non-positive width or height"),
    ("0 0.5 0.5", "a.txt line 1: expected `class cx cy w h`"),
])
def test_yolo_mistakes_are_named(tmp_path, text, message):
    yolo(tmp_path, {"a": text + "\n"})
    with pytest.raises(UserError) as e:
        read_detection(tmp_path, "yolo", None)
    assert message in str(e.value)


def test_folder_mistakes_are_named(tmp_path):
    yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "zebra": "0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(UserError, match="zebra.txt: a label file without an image"):
        read_detection(tmp_path, "auto", None)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    (empty / "classes.txt").write_text("cat\n")
    with pytest.raises(UserError, match="no images in this split"):
        read_detection(empty, "auto", None)
    with pytest.raises(UserError, match="classes.txt"):
        read_detection(yolo(tmp_path / "other" / "nameless", {}, classes=False), "yolo", None)


def test_transforms_move_boxes_with_the_image(tmp_path):
    path = coco(tmp_path, [{"category_id": 1, "bbox": [0, 0, 10, 10]}, {"category_id": 2, "bbox": [20, 10, 20, 20]}])
    samples = read_detection(path, "coco", None)
    train, evaluation = box_transforms(32, "strong")
    x, t = BoxDataset(samples, evaluation)[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.allclose(t["boxes"], torch.tensor([[0, 0, 8, 32 / 3], [16, 32 / 3, 32, 32]]), atol=1e-4)
    for epoch in range(6):  # crops, flips and jitter: boxes stay inside, labels stay paired with their boxes
        ds = BoxDataset(samples, train)
        ds.epoch = epoch
        x, t = ds[0]
        assert x.shape == (3, 32, 32) and len(t["boxes"]) == len(t["labels"]) <= 2
        assert (t["boxes"] >= 0).all() and (t["boxes"] <= 32).all()
        assert ((t["boxes"][:, 2:] - t["boxes"][:, :2]) >= 1).all()
    tiny = read_detection(coco(tmp_path / "tiny", [{"category_id": 1, "bbox": [4, 4, 1, 1]}]), "coco", None)
    assert len(BoxDataset(tiny, evaluation)[0][1]["boxes"]) == 1  # under a pixel at 32 px: still scored
    assert len(BoxDataset(tiny, box_transforms(32, "none")[0])[0][1]["boxes"]) == 0  # training may drop it
    images, targets = collate([BoxDataset(samples, evaluation)[0]] * 3)
    assert images.shape == (3, 3, 32, 32) and isinstance(targets, list) and len(targets) == 3
