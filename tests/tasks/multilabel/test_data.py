"""Multi-label manifests: labels as one delimited column (or a JSONL list) or one 0/1 column per class, every row
checked when a split loads (an unknown label, a sample without labels, a 0/1 column holding something else: one error
naming the file and line, exit 2 from the CLI); the classes are data.classes or the training split's sorted union."""

import json

import numpy as np
import pytest

from sft import load_recipe
from sft.errors import UserError
from sft.tasks import get_task
from sft.tasks.multilabel.data import read_multilabel
from tests.conftest import sft


def manifest(tmp_path, rows: list[str], header="text,labels", name="data.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_delimited_labels_become_multi_hot_targets_in_sorted_order(tmp_path):
    path = manifest(tmp_path, ["a,cat|dog", "b, dog ", "c,bird|cat|dog"])
    samples = read_multilabel(path, kind="text", column="text")
    assert samples.classes == ["bird", "cat", "dog"] and samples.ids[0] == f"{path}:2"
    assert samples.targets.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in ({"text": "a", "tags": ["x", "y"]},
                                                                {"text": "b", "tags": "y"})))
    samples = read_multilabel(jsonl, kind="text", column="text", label_column="tags", classes=["y", "x", "z"])
    assert samples.classes == ["y", "x", "z"] and samples.targets.tolist() == [[1, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize("row, says", [("c,cat|fish", "label 'fish' is not one of data.classes"),
                                       ("c,", "no label; every sample needs at least one")])
def test_a_bad_row_is_named_with_its_file_and_line(tmp_path, row, says):
    path = manifest(tmp_path, ["a,cat", "b,dog", row])
    with pytest.raises(UserError) as e:
        read_multilabel(path, kind="text", column="text", classes=["cat", "dog"])
    assert f"{path}:4:" in str(e.value) and says in str(e.value)


def test_binary_columns_and_empty_rows(tmp_path):
    path = manifest(tmp_path, ["a,1,0", "b,0,0", "c,1,1"], header="text,red,round")
    with pytest.raises(UserError, match=rf"{path}:3: no label.*allow_empty"):
        read_multilabel(path, kind="text", column="text", label_columns=["red", "round"])
    samples = read_multilabel(path, kind="text", column="text", label_columns=["red", "round"], allow_empty=True)
    assert samples.classes == ["red", "round"] and samples.targets.tolist() == [[1, 0], [0, 0], [1, 1]]
    path = manifest(tmp_path, ["a,1,0", "b,yes,1"], header="text,red,round")
    with pytest.raises(UserError, match=rf"{path}:3: label column 'red' holds 'yes'; a 0/1 label column"):
        read_multilabel(path, kind="text", column="text", label_columns=["red", "round"])
    with pytest.raises(UserError, match=rf"{path}:2: no column 'blue'.*data.label_columns"):
        read_multilabel(path, kind="text", column="text", label_columns=["blue"])


def test_val_and_test_may_hold_no_label_train_lacks_and_a_held_out_split_keeps_every_row(tmp_path):
    train = manifest(tmp_path, [f"t{i},{'a|b' if i % 3 else 'c'}" for i in range(30)], name="train.csv")
    test = manifest(tmp_path, ["x,a", "y,d"], name="test.csv")
    recipe = load_recipe(None, ["task=text-multilabel", f"data.train={train}", "data.val_fraction=0.2"])
    splits = get_task("text-multilabel").load_splits(recipe)
    assert splits.classes == ["a", "b", "c"] and len(splits.train) + len(splits.val) == 30
    assert np.allclose(np.concatenate([splits.train.targets, splits.val.targets]).sum(0), [20, 20, 10])
    recipe = load_recipe(None, ["task=text-multilabel", f"data.train={train}", f"data.test={test}"])
    with pytest.raises(UserError, match=rf"{test}:3: label 'd' is not one of data.classes"):
        get_task("text-multilabel").load_splits(recipe)


def test_sft_train_stops_at_a_bad_row_with_exit_2(tmp_path):
    train = manifest(tmp_path, ["a,x", "b,"], name="train.csv")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: text-multilabel\ndata:\n  train: {train}\nrun_dir: {tmp_path / 'run'}\n")
    result = sft("train", recipe)
    assert result.exit_code == 2 and f"{train}:3: no label" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
