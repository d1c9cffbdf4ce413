"""Regression manifests: every row is checked when a split loads, and a bad one is one error naming its file and
line (exit 2 from the CLI, no traceback); image paths are relative to the manifest; the held-out validation share
follows the targets' distribution."""

import json

import numpy as np
import pytest
from PIL import Image

from sft.data.splits import load_splits
from sft.errors import UserError
from sft.recipe import Data, Source
from sft.tasks.regression.data import read_targets, standardization
from tests.conftest import sft


def texts(tmp_path, rows: list[str], header="text,score") -> str:
    path = tmp_path / "data.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("cell, says", [("abc", "holds 'abc', not a number"), ("", "no value"),
                                        ("nan", "a finite number"), ("-inf", "a finite number")])
def test_a_bad_target_is_named_with_its_file_and_line(tmp_path, cell, says):
    path = texts(tmp_path, ["good,1.5", "fine,2", f"bad,{cell}", "late,3"])
    with pytest.raises(UserError) as e:
        read_targets(path, kind="text", target_columns=["score"], column="text")
    assert f"{path}:4:" in str(e.value) and "'score'" in str(e.value) and says in str(e.value)


def test_jsonl_values_must_be_numbers_and_columns_must_exist(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "a", "y": 1, "z": "2.5"}) + "\n" + json.dumps({"text": "b", "y": True, "z": 1})
                    + "\n")
    with pytest.raises(UserError, match=rf"{path}:2: target column 'y' holds True, not a number"):
        read_targets(path, kind="text", target_columns=["y", "z"], column="text")
    with pytest.raises(UserError, match=rf"{path}:1: no column 'w'.*data.target_columns"):
        read_targets(path, kind="text", target_columns=["w"], column="text")
    path.write_text(json.dumps({"text": "a", "y": 1, "z": "2.5"}) + "\n")
    samples = read_targets(path, kind="text", target_columns=["z", "y"], column="text")
    assert samples.targets.tolist() == [[2.5, 1.0]] and samples.classes == ["z", "y"] and samples.ids == [f"{path}:1"]


def test_image_paths_are_relative_to_the_manifest_and_every_image_is_checked(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,y\nimg/a.png,0.5\n")
    samples = read_targets(manifest, kind="image", target_columns=["y"], column="path")
    assert samples.items == [str(tmp_path / "img" / "a.png")] and samples.target(0).tolist() == [0.5]
    manifest.write_text("path,y\nimg/a.png,0.5\nimg/missing.png,1\n")
    with pytest.raises(UserError, match=rf"{manifest}:3: image file not found"):
        read_targets(manifest, kind="image", target_columns=["y"], column="path")
    manifest.write_text("path,y\nimg/a.png,0.5\nimg/broken.png,1\n")
    with pytest.raises(UserError, match=rf"{manifest}:3: not a readable image"):
        read_targets(manifest, kind="image", target_columns=["y"], column="path")


def test_sft_train_stops_at_a_bad_row_with_exit_2(tmp_path):
    path = texts(tmp_path, ["one,1", "two,n/a"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: text-regression\ndata:\n  train: {path}\n  target_columns: [score]\n"
                      f"run_dir: {tmp_path / 'run'}\n")
    result = sft("train", recipe)
    assert result.exit_code == 2 and f"{path}:3: target column 'score' holds 'n/a', not a number" in \
        " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_a_constant_target_has_nothing_to_learn():
    with pytest.raises(UserError, match=r"target column\(s\) \['b'\] hold a single value"):
        standardization(np.array([[1.0, 3.0], [2.0, 3.0]]), ["a", "b"], True, "data.train")
    mean, std = standardization(np.array([[1.0], [3.0]]), ["a"], True, "data.train")
    assert mean == [2.0] and std == [1.0]
    assert standardization(np.array([[1.0], [3.0]]), ["a"], False, "data.train") == ([0.0], [1.0])


def test_the_held_out_validation_share_spans_the_targets(tmp_path):
    """Without data.val, a tenth of train is held out in each tenth of the first target's range (quantile bins):
    a plain random draw of 20 of 200 would put exactly 2 in every decile once in about a thousand seeds."""
    rng = np.random.default_rng(0)
    values = rng.exponential(size=200)
    path = texts(tmp_path, [f"t{i},{v}" for i, v in enumerate(values)])
    data = Data[Source](train=str(path))
    splits = load_splits(data, 0, lambda source, names: read_targets(source.path, kind="text",
                                                                     target_columns=["score"], column="text"))
    assert len(splits.val) == 20 and len(splits.train) == 180
    everything = np.concatenate([splits.train.targets[:, 0], splits.val.targets[:, 0]])
    deciles = np.quantile(everything, np.linspace(0, 1, 11))
    counts = np.histogram(splits.val.targets[:, 0], bins=deciles)[0]
    assert counts.tolist() == [2] * 10
