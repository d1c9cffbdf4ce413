"""Issue 17, section 3: inputs that used to end in a traceback end in exit 2, a message naming the file and what to do,
and leave nothing behind that a rerun or --resume cannot get past."""

import json
import os

import pytest
import torch
from PIL import Image

from tests.conftest import sft, tiny_args


def image_folder(root, classes=("cat", "dog"), per_class=6):
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.new("RGB", (32, 32), (40 * i + k, 200 - 40 * i, 90)).save(root / name / f"{k}.png")
    return root


def folder_args(tmp_path, data):
    return [f"data.train={data}", "data.image_size=32", "model.backbone=timm/test_efficientnet",
            "model.weights=none", "trainer.epochs=1", "trainer.progress=false", "strategy.name=full",
            f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", "data.val_fraction=0.3"]


def one_line(result) -> str:
    return " ".join(result.output.split())


def test_single_class_data(tmp_path, recipe_file):
    data = image_folder(tmp_path / "data", classes=("cat",))
    result = sft("train", recipe_file, *folder_args(tmp_path, data))
    assert result.exit_code == 2, result.output
    assert f"data.train ({data}): the training samples are of one class only (['cat'])" in one_line(result)
    assert not (tmp_path / "run").exists()


def test_symlink_loop_in_a_class_folder(tmp_path, recipe_file):
    data = image_folder(tmp_path / "data")
    os.symlink("..", data / "cat" / "loop")  # cat/loop/cat/loop/... : 120 images became 4,920 once
    result = sft("train", recipe_file, *folder_args(tmp_path, data))
    assert result.exit_code == 2, result.output
    assert "a symbolic link leads back to" in one_line(result) and "remove the link" in one_line(result)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path, fashion_slice, recipe_file):
    args = [*tiny_args(tmp_path, fashion_slice), "strategy.name=full", "optim.name=sgd", "optim.scheduler=constant",
            "trainer.precision=32-true"]
    result = sft("train", recipe_file, *args, "optim.lr=1e12")  # found only once training runs: the loss is NaN
    assert result.exit_code == 2 and "training stopped: loss is" in result.output, result.output
    assert not (tmp_path / "run").exists()
    assert sft("train", recipe_file, *args, "optim.lr=0.01").exit_code == 0  # no --overwrite, no --resume needed


def test_run_dir_that_is_a_file_or_cannot_be_written(tmp_path, fashion_slice, recipe_file):
    (tmp_path / "taken").write_text("notes")
    result = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, tmp_path / "taken"))
    assert result.exit_code == 2 and "taken is a file, not a folder" in one_line(result), result.output
    assert (tmp_path / "taken").read_text() == "notes"
    try:  # /sys refuses writes even to root (who may write anywhere else, chmod or not)
        os.mkdir("/sys/sft-run")
    except OSError:
        pass
    else:
        os.rmdir("/sys/sft-run")
        pytest.skip("/sys is writable here")
    result = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, "/sys/sft-run"))
    assert result.exit_code == 2 and "/sys/sft-run: cannot write there" in one_line(result), result.output


def test_damaged_weights_file(tmp_path, fashion_slice, recipe_file):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": broken")
    result = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice), f"model.weights={path}")
    assert result.exit_code == 2, result.output
    assert f"{path}: damaged or not a safetensors file" in one_line(result)


def test_a_damaged_feature_cache_file_is_named_and_computed_again(tmp_path, fashion_slice, recipe_file, caplog):
    first = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, tmp_path / "a"))
    assert first.exit_code == 0, first.output
    files = sorted((tmp_path / "cache").glob("*.pt"))
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="sft"):
        again = sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice, tmp_path / "b"))
    assert again.exit_code == 0, again.output
    assert f"{files[0]}: damaged feature cache file" in caplog.text and "computing the features again" in caplog.text
    a, b = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("a", "b"))
    assert a["test_acc"] == b["test_acc"]
    assert all(torch.load(f, weights_only=True).ndim == 2 for f in files)  # rewritten whole


def test_non_utf8_text_data_and_predict_file(tmp_path, recipe_file):
    bad = tmp_path / "train.csv"
    bad.write_bytes(b"text,label\nfine text,a\ncaf\xe9 au lait,b\n")
    result = sft("train", recipe_file, "task=text-classification", f"data.train={bad}", "trainer.progress=false",
                 f"run_dir={tmp_path / 'run'}")
    assert result.exit_code == 2, result.output
    assert f"{bad}:3: not UTF-8 text (byte 0xe9 at column 4); save the file as UTF-8" in one_line(result)
    lines = tmp_path / "texts.txt"
    lines.write_bytes(b"one\n\xff two\n")
    (tmp_path / "text-run").mkdir()  # a text run's directory: its texts are read before its model loads
    (tmp_path / "text-run" / "recipe.yaml").write_text("task: text-classification\n")
    result = sft("predict", tmp_path / "text-run", "--file", lines)
    assert result.exit_code == 2 and f"{lines}:2: not UTF-8 text (byte 0xff at column 1)" in one_line(result)


def test_a_mistyped_local_model_folder_is_not_looked_up_on_the_hub(tmp_path, fortunes_slice, recipe_file,
                                                                   monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for typo in ("./modles/bert", str(tmp_path / "bert"), "~/no-such-sft-model", "models/my/bert"):
        result = sft("train", recipe_file, "task=text-classification", f"data.train={fortunes_slice['train']}",
                     f"model.backbone={typo}", "trainer.progress=false", f"run_dir={tmp_path / 'run'}")
        assert result.exit_code == 2, result.output
        assert f"model.backbone {typo}: no such model folder" in one_line(result)


def test_a_damaged_run_folder_is_named_and_rebuilt_from_its_checkpoints(tmp_path, fashion_slice, recipe_file):
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice)).exit_code == 0
    run, image = tmp_path / "run", tmp_path / "shoe.png"
    Image.new("RGB", (28, 28), (200, 200, 200)).save(image)
    weights, info = run / "model.safetensors", run / "model.json"
    good_weights, good_info = weights.read_bytes(), info.read_text()

    weights.write_bytes(good_weights[: len(good_weights) // 2])  # truncated
    result = sft("predict", run, image)
    assert result.exit_code == 2, result.output
    assert f"{weights}: damaged or not a safetensors file" in one_line(result)
    assert "sft train RUN_DIR/recipe.yaml --resume" in one_line(result)
    rebuilt = sft("train", run / "recipe.yaml", "--resume")  # no more epochs: the best checkpoint exported again
    assert rebuilt.exit_code == 0, rebuilt.output
    assert weights.read_bytes() == good_weights
    assert sft("predict", run, image).exit_code == 0

    info.write_text(good_info[:40])  # malformed JSON
    result = sft("predict", run, image)
    assert result.exit_code == 2 and f"{info}: damaged (JSONDecodeError" in one_line(result), result.output
    info.write_text(good_info.replace('"Bag"', '"Bag", "Coat"'))  # classes that disagree with the weights
    result = sft("predict", run, image)
    assert result.exit_code == 2, result.output
    assert f"{weights} has a head for 4 classes" in one_line(result) and "lists 5 classes" in one_line(result)
