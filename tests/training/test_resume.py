"""A run's randomness per epoch is a function of (seed, epoch, rank): a process killed with SIGKILL and resumed in a
new one, or a run whose feature cache was warm instead of cold, ends with the same weights, augmentation on."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from sft import fine_tune
from sft.recipe import dump_recipe
from tests.conftest import sft, tiny_args, tiny_recipe, tiny_text_recipe

KILLER = textwrap.dedent("""
    import os, signal, sys
    from lightning.pytorch.callbacks import Callback
    from sft import fine_tune, load_recipe

    class Kill(Callback):
        def on_train_epoch_end(self, trainer, module):  # runs after the epoch's last.ckpt is written
            if trainer.current_epoch == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    fine_tune(load_recipe(sys.argv[1]), callbacks=[Kill()])
""")


def same_weights(a, b) -> list[str]:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return [k for k in x if not torch.equal(x[k], y[k])]


@pytest.mark.parametrize("strategy", ["gradual"])  # full: the text run below and tests/training/test_ddp.py
def test_killed_and_resumed_in_a_new_process_equals_the_uninterrupted_run(tmp_path, fashion_slice, strategy):
    args = (f"strategy.name={strategy}", "trainer.epochs=3", "data.augment=light")
    whole = fine_tune(tiny_recipe(tmp_path / "a", fashion_slice, *args))
    recipe = tiny_recipe(tmp_path / "b", fashion_slice, *args)
    path = tmp_path / "b.yaml"
    path.write_text(dump_recipe(recipe))
    done = subprocess.run([sys.executable, "-c", KILLER, str(path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert (tmp_path / "b" / "run" / "checkpoints" / "last.ckpt").exists()
    resumed = fine_tune(recipe, resume=True)
    assert same_weights(whole.dir, resumed.dir) == []
    m = resumed.metrics  # the speed of the resumed process counts its own epochs only
    assert m["resumed_from_epoch"] in (1, 2) and m["epochs"] == 3
    expected = m["train_samples"] * (3 - m["resumed_from_epoch"]) / m["train_seconds"]
    assert m["samples_per_second"] == pytest.approx(expected, rel=0.02)
    assert resumed.metrics["test_acc"] == whole.metrics["test_acc"]


def test_a_warm_feature_cache_gives_the_same_run_as_a_cold_one(tmp_path, fashion_slice):
    args = ("strategy.name=two-stage", "trainer.epochs=3", "data.augment=light", f"cache_dir={tmp_path / 'cache'}")
    cold = fine_tune(tiny_recipe(tmp_path / "cold", fashion_slice, *args))
    assert any((tmp_path / "cache").iterdir())
    warm = fine_tune(tiny_recipe(tmp_path / "warm", fashion_slice, *args))
    assert same_weights(cold.dir, warm.dir) == []


# -- what --resume accepts --------------------------------------------------------------------------------------------

def test_resume_refuses_a_changed_recipe_and_names_what_changed(tmp_path, fashion_slice, recipe_file):
    args = tiny_args(tmp_path, fashion_slice)
    assert sft("train", recipe_file, *args).exit_code == 0
    before = (tmp_path / "run" / "model.json").read_text()
    for change, shown in (("data.classes=[a, b, c, d]", "data.classes: ['T-shirt', 'Trouser', 'Sneaker', 'Bag'] -> "
                                                        "['a', 'b', 'c', 'd']"),
                          ("model.backbone=timm/test_resnet", "model.backbone: 'timm/test_efficientnet' -> "
                                                              "'timm/test_resnet'"),
                          ("data.image_size=48", "data.image_size: 32 -> 48"),
                          ("optim.lr=0.5", "optim.lr: 0.01 -> 0.5")):
        result = sft("train", recipe_file, *args, change, "--resume")
        assert result.exit_code == 2, (change, result.output)
        assert shown in " ".join(result.output.split()), result.output
        assert "state_dict" not in result.output
    # a recipe of another task (its own keys) given the run's folder
    result = sft("train", recipe_file, "task=text-classification", "data.train=texts.csv", f"run_dir={tmp_path / 'run'}",
                 "--resume")
    assert result.exit_code == 2 and "task: 'image-classification' -> 'text-classification'" in result.output
    assert (tmp_path / "run" / "model.json").read_text() == before  # nothing rewritten


def test_resume_takes_longer_training_and_says_so(tmp_path, fashion_slice, recipe_file, caplog):
    args = tiny_args(tmp_path, fashion_slice)
    assert sft("train", recipe_file, *args).exit_code == 0
    with caplog.at_level("WARNING", logger="sft"):
        result = sft("train", recipe_file, *args, "trainer.epochs=2", "--resume")
    assert result.exit_code == 0, result.output
    assert "trainer.epochs: 1 -> 2" in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 2


def test_resume_refuses_classes_that_changed_in_the_data(tmp_path, recipe_file):
    from PIL import Image
    data = tmp_path / "data"
    for i, name in enumerate(("cat", "dog", "fox")):
        (data / name).mkdir(parents=True)
        for k in range(6):
            Image.new("RGB", (32, 32), (40 * i + k, 200 - 40 * i, 90)).save(data / name / f"{k}.png")
    args = [f"data.train={data}", "data.image_size=32", "model.backbone=timm/test_efficientnet", "model.weights=none",
            "trainer.epochs=1", "trainer.progress=false", "strategy.name=full", f"run_dir={tmp_path / 'run'}",
            f"cache_dir={tmp_path / 'cache'}", "data.val_fraction=0.3"]
    (data / "fox").rename(tmp_path / "fox")
    assert sft("train", recipe_file, *args).exit_code == 0
    (tmp_path / "fox").rename(data / "fox")
    result = sft("train", recipe_file, *args, "--resume")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "last.ckpt" in text and "['cat', 'dog'], resuming it now would use ['cat', 'dog', 'fox']" in text


def test_a_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    from sft.errors import UserError
    from sft.training.resume import check_checkpoint
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": torch.nn.Linear(4, 2).state_dict(), "sft": {}}, path)
    with pytest.raises(UserError, match=r"2 of another shape \(e.g. bias \(2,\) vs \(3,\), checkpoint vs model"):
        check_checkpoint(path, torch.nn.Linear(4, 3), {})


class Planted:
    """What a planted checkpoint could hold: unpickling it would create a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_planted_checkpoint_runs_no_code_even_when_torch_is_told_to_unpickle(tmp_path, fashion_slice, recipe_file,
                                                                               monkeypatch):
    args = tiny_args(tmp_path, fashion_slice)
    assert sft("train", recipe_file, *args).exit_code == 0
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a common workaround, set for other tools
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    good = torch.load(last, weights_only=True)
    torch.save({**good, "planted": Planted(tmp_path / "pwned")}, last)
    result = sft("train", recipe_file, *args, "--resume")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{last}: refused" in text and "weights-only" in text
    assert "weights_only=False" not in text and "False" not in text
    assert not (tmp_path / "pwned").exists()
    last.write_bytes(last.read_bytes()[:200])  # truncated: a clear error too
    result = sft("train", recipe_file, *args, "--resume")
    assert result.exit_code == 2 and "damaged or not a PyTorch file" in result.output, result.output
    torch.save(good, last)  # the genuine file resumes with the variable still set: Lightning loads it weights-only
    assert sft("train", recipe_file, *args, "trainer.epochs=2", "--resume").exit_code == 0


# -- from the middle of an epoch ----------------------------------------------------------------------------------------

KILL_MID_EPOCH = textwrap.dedent("""
    import os, signal, sys
    from lightning.pytorch.callbacks import Callback
    from sft import fine_tune, load_recipe
    from sft.training.trainer import optimizer_stepped

    STEP, MICRO = int(sys.argv[2]), sys.argv[3] == "micro"

    class Kill(Callback):  # runs before the checkpoint callbacks: last.ckpt is an earlier step's
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == STEP and not (MICRO and optimizer_stepped(trainer, batch_idx)):
                os.kill(os.getpid(), signal.SIGKILL)

    fine_tune(load_recipe(sys.argv[1]), callbacks=[Kill()])
""")


def killed_at_step_11(tmp_path, recipe, step: int = 11, micro: bool = False) -> dict:
    """Run `recipe` in a child process killed with SIGKILL at `step` (step 11: batch 4 of 7 in epoch 2, last.ckpt
    is step 9's); `micro`: at the first batch after it that only accumulates gradients. Its last.ckpt."""
    path = tmp_path / "b.yaml"
    path.write_text(dump_recipe(recipe))
    done = subprocess.run([sys.executable, "-c", KILL_MID_EPOCH, str(path), str(step), "micro" if micro else "step"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    return torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("strategy", ["gradual"])  # full: the text run below and test_ddp.py
def test_killed_inside_an_epoch_and_resumed_equals_the_uninterrupted_run(tmp_path, fashion_slice, strategy):
    args = (f"strategy.name={strategy}", "trainer.epochs=2", "data.augment=light", "model.dropout=0.2",
            "data.batch_size=32")
    whole = fine_tune(tiny_recipe(tmp_path / "a", fashion_slice, *args))  # default: checkpoints every 5 minutes
    recipe = tiny_recipe(tmp_path / "b", fashion_slice, *args, "trainer.checkpoint_steps=3")
    last = killed_at_step_11(tmp_path, recipe)
    assert last["global_step"] == 9 and last["epoch"] == 1 and last["RunData"] == {"epoch": 1, "batches_done": 2}
    resumed = fine_tune(recipe, resume=True)
    assert same_weights(whole.dir, resumed.dir) == []
    assert resumed.metrics["test_acc"] == whole.metrics["test_acc"]


def test_a_text_run_killed_inside_an_epoch_resumes_to_the_same_weights(tmp_path, fortunes_slice, tiny_bert):
    """Batches grouped by length (their own sampler) resume at the same batch too."""
    args = ("strategy.name=full", "trainer.epochs=2", "model.dropout=0.1")
    whole = fine_tune(tiny_text_recipe(tmp_path / "a", fortunes_slice, tiny_bert, *args))
    recipe = tiny_text_recipe(tmp_path / "b", fortunes_slice, tiny_bert, *args, "trainer.checkpoint_steps=3")
    assert recipe.data.group_by_length
    last = killed_at_step_11(tmp_path, recipe)
    assert last["global_step"] == 9 and last["RunData"] == {"epoch": 1, "batches_done": 2}
    resumed = fine_tune(recipe, resume=True)
    assert same_weights(whole.dir, resumed.dir) == []


class SavedAt(Callback):
    """Where each checkpoint this process writes stands: (global step, batches of its epoch done)."""

    def __init__(self):
        self.saved = []

    def on_save_checkpoint(self, trainer, module, checkpoint) -> None:
        self.saved.append((checkpoint["global_step"], checkpoint["RunData"]["batches_done"]))


def test_under_gradient_accumulation_checkpoints_wait_for_the_step_and_resume_exactly(tmp_path, fashion_slice):
    """7 batches an epoch in steps of 2 (the last of one): a checkpoint asked for after every batch (a tiny time
    interval) is written after batches 2, 4, 6 and 7 only; killed after batch 5 of epoch 2, the run resumes from
    batch 4 and ends with the uninterrupted run's weights."""
    args = ("strategy.name=full", "trainer.epochs=2", "data.augment=light", "model.dropout=0.2", "data.batch_size=32",
            "optim.accumulate=2", "trainer.checkpoint_minutes=0.000001")
    saved = SavedAt()
    whole = fine_tune(tiny_recipe(tmp_path / "a", fashion_slice, *args), callbacks=[saved])
    assert {done for _, done in saved.saved} == {2, 4, 6, 7}, saved.saved
    assert max(step for step, _ in saved.saved) == 8
    recipe = tiny_recipe(tmp_path / "b", fashion_slice, *args)
    last = killed_at_step_11(tmp_path, recipe, step=6, micro=True)
    assert last["global_step"] == 6 and last["RunData"] == {"epoch": 1, "batches_done": 4}
    resumed = fine_tune(recipe, resume=True)
    assert same_weights(whole.dir, resumed.dir) == []


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's list of mapped files")
def test_the_resume_check_reads_the_checkpoint_memory_mapped(tmp_path):
    """check_checkpoint looks at names and shapes; Lightning reads the whole file once, for the resume itself."""
    from sft.training.resume import load_checkpoint
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": torch.nn.Linear(64, 64).state_dict()}, path)
    ckpt = load_checkpoint(path)
    assert str(path) in Path("/proc/self/maps").read_text()  # mapped, not read into memory
    assert torch.equal(ckpt["state_dict"]["weight"], torch.load(path, weights_only=True)["state_dict"]["weight"])


def test_a_run_s_own_recipe_resumes_that_run_wherever_it_lies(tmp_path, fashion_slice, recipe_file, monkeypatch):
    import shutil
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, fashion_slice, "runs/a")  # stored as given: relative to where the run started
    assert sft("train", recipe_file, *args).exit_code == 0
    shutil.copytree("runs/a", "runs/b")
    a_files = {p.name: p.read_bytes() for p in (tmp_path / "runs" / "a").iterdir() if p.is_file()}
    result = sft("train", "runs/b/recipe.yaml", "trainer.epochs=2", "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "runs" / "b" / "metrics.json").read_text())["epochs"] == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "runs" / "a").iterdir() if p.is_file()} == a_files
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # from another directory: the recipe's folder, not ./runs/b
    result = sft("train", "../runs/b/recipe.yaml", "trainer.epochs=3", "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "runs" / "b" / "metrics.json").read_text())["epochs"] == 3
    assert not (elsewhere / "runs").exists()
    result = sft("train", "../runs/b/recipe.yaml", "run_dir=../runs/a", "trainer.epochs=3", "--resume")
    assert result.exit_code == 2 and "names another folder" in " ".join(result.output.split()), result.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "runs" / "a").iterdir() if p.is_file()} == a_files


def test_resuming_a_finished_run_says_so_and_rebuilds_only_its_model_files(tmp_path, fashion_slice, recipe_file,
                                                                           caplog):
    run = tmp_path / "run"
    assert sft("train", recipe_file, *tiny_args(tmp_path, fashion_slice)).exit_code == 0
    metrics = (run / "metrics.json").read_bytes()
    assert sft("eval", run, "--top-losses", "0").exit_code == 0  # fits and stores a temperature
    temperature = json.loads((run / "model.json").read_text())["temperature"]
    assert sft("train", run / "recipe.yaml", "--resume").exit_code == 0  # rebuilt over it: the temperature is kept
    assert json.loads((run / "model.json").read_text())["temperature"] == temperature != 1.0
    (run / "model.json").unlink()
    with caplog.at_level("WARNING", logger="sft"):
        result = sft("train", run / "recipe.yaml", "--resume")
    assert result.exit_code == 0, result.output
    assert "is finished: its 1 epochs are trained" in caplog.text and "trainer.epochs above 1" in caplog.text
    assert "test_acc" not in result.output  # no table of old metrics as if it had just trained
    assert (run / "metrics.json").read_bytes() == metrics and (run / "model.json").is_file()
