"""The detection datasets people bring: an Ultralytics data.yaml and its images/<split> + labels/<split> tree, a
Roboflow export, Pascal VOC XML; each read into the same checked boxes, and a folder in no layout named as such."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sft.errors import UserError
from sft.recipe import validate
from sft.tasks.detection.data import read_detection
from sft.tasks.detection.recipe import DetectionRecipe
from sft.tasks.detection.task import Detection
from tests.conftest import sft

BOX = "0 0.5 0.5 0.5 0.5\n"  # on a 40x30 image: [10, 7.5, 30, 22.5]


def picture(path: Path, size=(40, 30), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def labelled(images: Path, labels: Path, names: list[str], text=BOX, size=(40, 30)):
    for i, name in enumerate(names):
        picture(images / f"{name}.png", size, i)
        labels.mkdir(parents=True, exist_ok=True)
        (labels / f"{name}.txt").write_text(text)


def ultralytics_set(tmp_path: Path, size=(40, 30), train=3, val=2, test=2) -> Path:
    """ds/images/{train,val,test} + ds/labels/...; cfg/data.yaml with `path: ../ds`, names as a map, train and
    val as folders, test as a .txt list (one ./ line, one relative to the root)."""
    ds = tmp_path / "ds"
    for split, n in (("train", train), ("val", val), ("test", test)):
        labelled(ds / "images" / split, ds / "labels" / split, [f"{split}{i}" for i in range(n)], size=size)
    (ds / "labels" / "train" / "train1.txt").write_text("1 0.25 0.25 0.2 0.2\n" + BOX)
    (ds / "test.txt").write_text("./images/test/test0.png\nimages/test/test1.png\n")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "data.yaml").write_text("path: ../ds\ntrain: images/train\nval: images/val\ntest: test.txt\n"
                                                "names:\n  0: cat\n  1: dog\n")
    return tmp_path / "cfg" / "data.yaml"


def data_section(**data) -> DetectionRecipe:
    return validate({"task": "detection", "data": data}, DetectionRecipe)


def test_a_data_yaml_fills_every_split_with_its_boxes_and_names(tmp_path):
    path = ultralytics_set(tmp_path)
    recipe = data_section(train=str(path))
    d = recipe.data
    assert (d.train.split, d.val.split, d.test.split) == ("train", "val", "test")
    assert d.val.path == d.test.path == str(path)
    splits = Detection().load_splits(recipe)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 2, 2)
    assert splits.classes == ["cat", "dog"]
    i = [Path(f).name for f in splits.train.items].index("train1.png")
    assert np.allclose(splits.train.boxes[i], [[6, 4.5, 14, 10.5], [10, 7.5, 30, 22.5]])
    assert list(splits.train.box_labels[i]) == [1, 0]
    assert sorted(Path(f).name for f in splits.test.items) == ["test0.png", "test1.png"]


def test_explicit_splits_win_and_a_yaml_without_val_holds_one_out(tmp_path):
    path = ultralytics_set(tmp_path, train=10)
    other = tmp_path / "other"
    labelled(other / "images", other / "labels", ["x"])
    d = data_section(train=str(path), val=str(other), test=None).data
    assert d.val.path == str(other) and d.test is None
    d = data_section(train=str(other), val=str(path)).data  # a yaml given as data.val is read at its val split
    assert d.val.split == "val" and d.train.split is None and d.test is None
    path.write_text(path.read_text().replace("val: images/val\n", ""))
    recipe = data_section(train=str(path), val_fraction=0.2)
    assert recipe.data.val is None and recipe.data.test.split == "test"
    splits = Detection().load_splits(recipe)
    assert (len(splits.train), len(splits.val)) == (8, 2)


def test_the_ultralytics_tree_without_a_yaml_and_a_roboflow_export(tmp_path):
    path = ultralytics_set(tmp_path)
    ds = tmp_path / "ds"
    (ds / "classes.txt").write_text("cat\ndog\n")
    one = read_detection(ds / "images" / "val", "auto", None)  # labels found by the images -> labels rule
    assert len(one) == 2 and one.classes == ["cat", "dog"] and np.allclose(one.boxes[0], [[10, 7.5, 30, 22.5]])
    d = data_section(train=str(ds)).data  # the root: its images/<split> folders are the splits
    assert (d.train.split, d.val.split, d.test.split) == ("train", "val", "test")
    assert len(read_detection(d.test.path, d.test.format, None, d.test.split)) == 2
    path.unlink()

    rf = tmp_path / "rf"
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        labelled(rf / split / "images", rf / split / "labels", [f"{split}{i}" for i in range(n)])
    (rf / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\nnc: 2\n"
                                  "names: ['cat', 'dog']\n")
    splits = Detection().load_splits(data_section(train=str(rf)))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 2, 1) and splits.classes == ["cat", "dog"]
    valid = read_detection(rf / "valid", "auto", None)  # one split folder, names from the data.yaml above it
    assert len(valid) == 2 and valid.classes == ["cat", "dog"]
    (rf / "data.yaml").unlink()
    d = data_section(train=str(rf)).data  # <split>/images folders without a yaml
    assert (d.train.split, d.val.split, d.test.split) == ("train", "val", "test")


def voc_xml(objects, filename="", size=(40, 30)) -> str:
    parts = [f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin>"
             f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
             for name, b, difficult in objects]
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size>{''.join(parts)}</annotation>")


def voc_set(root: Path, sets=True) -> Path:
    annotations = {"a": [("dog", (11, 8, 30, 22), 0)], "b": [("cat", (1, 1, 40, 30), 1), ("dog", (5, 5, 9, 9), 0)],
                   "c": [("bird", (2, 3, 10, 12), 0)], "d": []}
    (root / "Annotations").mkdir(parents=True)
    for i, (name, objects) in enumerate(annotations.items()):
        picture(root / "JPEGImages" / f"{name}.jpg", seed=i)
        (root / "Annotations" / f"{name}.xml").write_text(voc_xml(objects, f"{name}.jpg"))
    if sets:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
        (root / "ImageSets" / "Main" / "val.txt").write_text("c\nd\n")
    return root


def test_voc_boxes_become_zero_based_and_its_image_sets_are_the_splits(tmp_path):
    root = voc_set(tmp_path / "VOC2012")
    recipe = data_section(train=str(root))
    assert (recipe.data.train.split, recipe.data.val.split, recipe.data.test) == ("train", "val", None)
    splits = Detection().load_splits(recipe)
    assert splits.classes == ["bird", "cat", "dog"]  # every annotation's names, sorted, so val agrees with train
    assert [Path(f).stem for f in splits.train.items] == ["a", "b"] and len(splits.val) == 2
    assert np.allclose(splits.train.boxes[0], [[10, 7, 30, 22]]) and list(splits.train.box_labels[0]) == [2]
    assert np.allclose(splits.train.boxes[1], [[0, 0, 40, 30], [4, 4, 9, 9]])  # the difficult box is kept
    assert splits.val.negatives == 1
    listed = read_detection(root / "ImageSets" / "Main" / "val.txt", "auto", None)
    assert [Path(f).stem for f in listed.items] == ["c", "d"]
    whole = voc_set(tmp_path / "plain", sets=False)
    assert data_section(train=str(whole)).data.val is None and len(read_detection(whole, "auto", None)) == 4


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("<xmax>30</xmax>", "<xmax>45</xmax>"), "a.xml: object 0 (dog): bndbox"),
    (lambda t: t.replace("<ymin>8</ymin>", "<ymin>eight</ymin>"), "a.xml: object 0 (dog): expected <bndbox>"),
    (lambda t: t.replace("dog", "wolf"), "a.xml: object 0 (wolf): class 'wolf' is not in data.classes"),
    (lambda t: t.replace("</annotation>", ""), "a.xml: cannot read this VOC annotation"),
])
def test_voc_mistakes_name_the_file_and_object(tmp_path, edit, message):
    root = voc_set(tmp_path / "voc")
    xml = root / "Annotations" / "a.xml"
    xml.write_text(edit(xml.read_text()))
    with pytest.raises(UserError) as e:
        read_detection(root, "auto", ["bird", "cat", "dog"], "train")
    assert message in str(e.value)


def test_a_folder_in_no_layout_and_bad_data_yamls_are_named(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.md").write_text("hello")
    with pytest.raises(UserError) as e:
        read_detection(tmp_path / "stuff", "auto", None)
    for layout in ("COCO", "YOLO/Roboflow", "images/<split> + labels/<split>", "data.yaml", "Pascal VOC"):
        assert layout in str(e.value)
    path = ultralytics_set(tmp_path)
    text = path.read_text()
    for bad, message in (("names:\n  0: cat\n  2: dog\n", "names: the keys of {index: name} must be 0..1"),
                         ("names: 7\n", "names: expected a list of class names"),
                         ("names: [cat, dog]\nnc: 3\n", "nc: 3 but names has 2 classes")):
        path.write_text(text[:text.index("names:")] + bad)
        with pytest.raises(UserError) as e:
            Detection().load_splits(data_section(train=str(path)))
        assert str(path) in str(e.value) and message in str(e.value)
    path.write_text(text.replace("val: images/val", "val: images/missing"))
    with pytest.raises(UserError) as e:
        Detection().load_splits(data_section(train=str(path)))
    assert f"{path}: val: 'images/missing' not found" in str(e.value)
    path.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="cannot read the data.yaml") as e:
        data_section(train=str(path))
    assert "JSON" not in str(e.value)
    path.write_text(text)
    with pytest.raises(UserError, match="names \\['cat', 'dog'\\] differ from data.classes"):
        Detection().load_splits(data_section(train=str(path), classes=["dog", "cat"]))


def test_training_on_an_ultralytics_data_yaml(tmp_path):
    """The whole path through `sft train` and `sft eval` (the run's test split is the yaml's .txt list)."""
    path = ultralytics_set(tmp_path, size=(64, 64), train=8, val=4, test=4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("\n".join([
        "task: detection", "data:", f"  train: {path}", "  image_size: 64", "  batch_size: 8", "model:",
        "  fpn_channels: 64", "strategy:", "  name: linear-probe", "trainer:", "  epochs: 1", "  progress: false",
        f"run_dir: {tmp_path / 'run'}", f"cache_dir: {tmp_path / 'cache'}"]) + "\n")
    result = sft("train", recipe)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {k: v["images"] for k, v in metrics["boxes"].items()} == {"train": 8, "val": 4, "test": 2}
    result = sft("eval", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["samples"] == 2  # test.txt lists two
