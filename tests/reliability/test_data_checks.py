"""Data that trained to the end or failed late stops before training with the file and its line, key or annotation
named: non-finite box coordinates, splits without boxes, normalised COCO boxes, folders given for files, a
segmentation split in another layout or with a mask but no image, and a bad chat line before the model loads."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from sft.core.csvfile import read_rows
from sft.data.chat import read_chats
from sft.data.texts import read_texts
from sft.errors import UserError
from sft.tasks import get_task, load_recipe
from sft.tasks.detection.data import read_detection
from sft.tasks.segmentation.data import read_pairs
from tests.conftest import sft


def one_line(result) -> str:
    return " ".join(result.output.split())


def picture(path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(path)


def coco(folder, boxes, width=40):
    """One 40x30 image per box (a box of None: an image without one); json.dumps writes NaN and Infinity as
    Python's json reads them."""
    for i in range(len(boxes)):
        picture(folder / "images" / f"{i}.png")
    data = {"images": [{"id": i + 1, "file_name": f"images/{i}.png", "width": width, "height": 30}
                       for i in range(len(boxes))],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": b}
                            for i, b in enumerate(boxes) if b is not None],
            "categories": [{"id": 1, "name": "cat"}]}
    (folder / "instances.json").write_text(json.dumps(data))
    return folder / "instances.json"


def yolo(folder, labels: dict[str, str]):
    for stem, text in labels.items():
        picture(folder / "images" / f"{stem}.png")
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        (folder / "labels" / f"{stem}.txt").write_text(text)
    (folder / "classes.txt").write_text("cat\n")
    return folder


@pytest.mark.parametrize("bbox", [[float("nan"), 1, 5, 5], [1, 1, float("inf"), 5], [1, 1, 5, float("-inf")]])
def test_coco_box_with_a_non_finite_coordinate_is_refused(tmp_path, bbox):
    path = coco(tmp_path, [bbox])
    with pytest.raises(UserError, match="annotation id 1: bbox .* not a finite number") as e:
        read_detection(path, "coco", None)
    assert str(path) in str(e.value)


def test_coco_image_size_and_annotation_without_id_are_named(tmp_path):
    path = coco(tmp_path / "a", [[1, 1, 5, 5]], width=float("nan"))
    with pytest.raises(UserError, match="image id 1: \"width\" and \"height\" must be positive numbers"):
        read_detection(path, "coco", None)
    path = coco(tmp_path / "b", [[float("nan"), 1, 5, 5]])
    data = json.loads(path.read_text())
    del data["annotations"][0]["id"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"annotation 0 \(no id\): bbox .* not a finite number"):
        read_detection(path, "coco", None)


@pytest.mark.parametrize("text", ["0 nan 0.5 0.2 0.2", "0 0.5 0.5 inf 0.2", "0 0.5 -inf 0.2 0.2"])
def test_yolo_box_with_a_non_finite_coordinate_is_refused(tmp_path, text):
    yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n" + text + "\n"})
    with pytest.raises(UserError, match="not a finite number") as e:
        read_detection(tmp_path, "yolo", None)
    assert f"{tmp_path / 'labels' / 'a.txt'} line 2" in str(e.value)


def detection_splits(tmp_path, train, val=None):
    recipe = load_recipe(None, ["task=detection", f"data.train={train}", f"data.val={val or train}",
                                f"run_dir={tmp_path / 'run'}"])
    return get_task("detection").load_splits(recipe)


def test_detection_split_without_boxes_is_refused_before_training(tmp_path):
    empty = yolo(tmp_path / "empty", {"a": "", "b": "\n"})
    with pytest.raises(UserError, match=r"data.train \(.*empty\): the split has 2 images and no boxes"):
        detection_splits(tmp_path, empty)
    good = yolo(tmp_path / "good", {"a": "0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(UserError, match=r"data.val \(.*empty\): the split has 2 images and no boxes"):
        detection_splits(tmp_path, good, empty)


def test_normalised_coco_boxes_are_refused_or_warned_before_training(tmp_path, caplog):
    unit = [[0.1, 0.2, 0.3, 0.3], [0.5, 0.5, 0.25, 0.2], [0.2, 0.1, 0.4, 0.5]]
    path = coco(tmp_path / "unit", unit)
    with pytest.raises(UserError, match="normalised to 0..1 were given as pixels.*COCO's bbox is .* in pixels"):
        detection_splits(tmp_path, path)
    mixed = coco(tmp_path / "mixed", unit + [[4, 6, 10, 12]])  # most boxes normalised, one in pixels
    with caplog.at_level(logging.WARNING, logger="sft"):
        splits = detection_splits(tmp_path, mixed)
    assert len(splits.train) == 4 and "normalised to 0..1 were given as pixels" in caplog.text


@pytest.mark.parametrize("reader, expected", [
    (lambda p: read_texts(p), "is a folder; expected a CSV, TSV or JSONL file of texts and labels"),
    (lambda p: read_chats(p), "is a folder; expected a JSONL file of conversations"),
    (lambda p: read_rows(p, ["sample"]), "is a folder; expected a CSV file"),
])
def test_a_folder_given_for_a_file_is_called_a_folder(tmp_path, reader, expected):
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match=expected) as e:
        reader(tmp_path / "data")
    assert "not found" not in str(e.value)


def test_a_folder_given_as_the_recipe_is_called_a_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text("optim:\n  lr: 0.01\n")
    result = sft("train", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert f"is a folder; expected a recipe YAML file (it holds {tmp_path / 'run' / 'recipe.yaml'}" in \
        one_line(result)


def test_a_folder_given_as_the_texts_to_predict_is_called_a_folder(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "recipe.yaml").write_text("task: text-classification\n")  # a text run's directory, as it is read
    result = sft("predict", tmp_path, "--file", tmp_path / "texts")
    assert result.exit_code == 2 and "is a folder; expected a text file with one text per line" in one_line(result)


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_a_recipe_number_that_is_not_finite_is_refused(value):
    with pytest.raises(UserError, match="finite number"):
        load_recipe(None, ["data.train=x", f"optim.weight_decay={value}"])


def segmentation_recipe(tmp_path, data):
    return load_recipe(None, ["task=segmentation", f"data.train={data}", f"run_dir={tmp_path / 'run'}"])


@pytest.mark.parametrize("make, found", [
    (lambda d: [picture(d / c / f"{k}.png") for c in ("cat", "dog") for k in range(2)],
     "found the subfolders cat/, dog/ holding images, the layout of image classification"),
    (lambda d: d.mkdir(), "found no subfolders (0 files)"),
    (lambda d: ((d / "images").mkdir(parents=True), (d / "masks").mkdir()), "found no images in"),
])
def test_segmentation_split_in_another_layout_is_named_before_classes_are_asked(tmp_path, make, found):
    data = tmp_path / "data"
    make(data)
    with pytest.raises(UserError, match="expected the subfolders images/ and masks/") as e:
        get_task("segmentation").load_splits(segmentation_recipe(tmp_path, data))
    assert found in str(e.value) and "data.classes" not in str(e.value)


def test_segmentation_mask_without_an_image_is_refused(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((32, 32), np.uint8), "L").save(tmp_path / "masks" / f"{name}.png")
    picture(tmp_path / "images" / "a.jpg", (32, 32))
    with pytest.raises(UserError, match="a mask without an image") as e:
        read_pairs(tmp_path, "folder", ["background", "square"], 255, None)
    assert str(tmp_path / "masks" / "b.png") in str(e.value)


def test_a_bad_chat_line_is_reported_before_the_model_loads(tmp_path, monkeypatch):
    import sft.tasks.causal_lm.task as causal_lm
    monkeypatch.setattr(causal_lm, "create_causal_lm",
                        lambda *a, **k: pytest.fail("the model loaded before the data was checked"))
    rows = [json.dumps({"prompt": f"n={n}", "completion": "Sure."}) for n in range(8)]
    bad = tmp_path / "train.jsonl"
    bad.write_text("\n".join(rows[:2] + ['{"prompt": "x", "answer": "y"}'] + rows[2:]) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: causal-lm\n")
    result = sft("train", recipe, f"data.train={bad}", "trainer.progress=false", f"run_dir={tmp_path / 'run'}",
                 f"cache_dir={tmp_path / 'cache'}")
    assert result.exit_code == 2, result.output
    assert f"{bad}:3: expected `messages` or `prompt` and `completion`" in one_line(result)
