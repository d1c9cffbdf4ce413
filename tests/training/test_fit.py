import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from sft.models.vision import create_backbone
from sft import fine_tune
from sft.errors import UserError
from tests.conftest import tiny_recipe


class BackboneSnapshot(Callback):
    """Records the backbone's tensors (weights and BatchNorm statistics) when training starts and ends."""

    def on_fit_start(self, trainer, module):
        self.before = {k: v.clone() for k, v in module.backbone.state_dict().items()}

    def on_fit_end(self, trainer, module):
        self.after = {k: v.clone() for k, v in module.backbone.state_dict().items()}


class Crash(Callback):
    """Kills training right after the checkpoint of epoch `epochs` has been written."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch + 1 >= self.epochs:
            raise RuntimeError("power cut")


def test_linear_probe_run_directory_and_cache(tmp_path, fashion_slice):
    run = fine_tune(tiny_recipe(tmp_path, fashion_slice, "strategy.name=linear-probe", "trainer.epochs=3"))
    for name in ("recipe.yaml", "model.safetensors", "model.json", "metrics.json", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (run.dir / name).exists(), name
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert metrics == run.metrics
    for key in ("val_acc", "val_loss", "test_acc", "train_seconds", "samples_per_second"):
        assert metrics[key] is not None, key
    assert metrics["test_acc"] > 0.4  # 4 classes, random backbone features: well above chance (0.25)
    cached = sorted((tmp_path / "cache").glob("*.pt"))
    # train, val and test features, each computed once for all epochs and the metrics; under bf16 (a CPU with
    # AVX512-BF16 or AMX, a GPU) the test split is scored in fp32 from the images instead
    assert len(cached) == (3 if metrics["precision"] == "32-true" else 2)


def test_frozen_backbone_does_not_change_at_all(tmp_path, fashion_slice):
    snapshot = BackboneSnapshot()
    fine_tune(tiny_recipe(tmp_path, fashion_slice, "strategy.name=linear-probe", "strategy.cache=none"),
              callbacks=[snapshot])
    for key, before in snapshot.before.items():
        assert torch.equal(before, snapshot.after[key]), f"{key} moved while frozen"


@pytest.mark.parametrize("strategy", ["full", "partial", "two-stage", "gradual"])
def test_every_strategy_trains(tmp_path, fashion_slice, strategy):
    snapshot = BackboneSnapshot()
    run = fine_tune(tiny_recipe(tmp_path, fashion_slice, f"strategy.name={strategy}", "strategy.trainable_groups=1"),
                    callbacks=[snapshot])
    assert run.metrics["test_acc"] > 0.4
    moved = [k for k, v in snapshot.before.items() if not torch.equal(v, snapshot.after[k])]
    assert moved, "the backbone should train in epoch 2"
    if strategy == "partial":  # only the last group (the model's own grouping) may change
        last = {name.rsplit(".", 1)[0] for name in create_backbone("timm/test_efficientnet", None).groups[-1]}
        assert all(k.rsplit(".", 1)[0] in last for k in moved), moved


def test_resumed_run_equals_uninterrupted_run(tmp_path, fashion_slice):
    args = ("strategy.name=gradual", "trainer.epochs=3", "data.augment=light", "model.dropout=0.2")
    full = fine_tune(tiny_recipe(tmp_path / "a", fashion_slice, *args))
    with pytest.raises(RuntimeError, match="power cut"):
        fine_tune(tiny_recipe(tmp_path / "b", fashion_slice, *args), callbacks=[Crash(2)])
    resumed = fine_tune(tiny_recipe(tmp_path / "b", fashion_slice, *args), resume=True)
    assert (resumed.dir / "logs" / "metrics.before-resume-1.csv").exists()  # the first epochs' logs are kept
    a, b = load_file(full.dir / "model.safetensors"), load_file(resumed.dir / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.metrics["test_acc"] == full.metrics["test_acc"]
    assert resumed.metrics["val_acc"] == full.metrics["val_acc"]


def test_existing_run_is_never_clobbered(tmp_path, fashion_slice):
    recipe = tiny_recipe(tmp_path, fashion_slice, "strategy.name=linear-probe", "trainer.epochs=1")
    first = fine_tune(recipe)
    before = (first.dir / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a finished run"):
        fine_tune(recipe)
    assert (first.dir / "model.safetensors").read_bytes() == before
    fine_tune(recipe, overwrite=True)
    with pytest.raises(UserError, match="nothing to resume"):
        fine_tune(tiny_recipe(tmp_path / "other", fashion_slice), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, fashion_slice):
    recipe = tiny_recipe(tmp_path, fashion_slice, "strategy.name=full", "optim.name=sgd", "optim.lr=1e12",
                         "optim.scheduler=constant", "trainer.precision=32-true")
    with pytest.raises(UserError, match="training stopped: loss is NaN or infinite"):
        fine_tune(recipe)


@pytest.mark.parametrize("overrides", [("data.balance=oversample",), ("data.balance=undersample",),
                                       ("data.balance=class-weights", "optim.loss=focal")])
def test_imbalance_handling_and_minority_metrics(tmp_path, fashion_slice, overrides):
    run = fine_tune(tiny_recipe(tmp_path, fashion_slice, "strategy.name=linear-probe", *overrides))
    for key in ("test_acc", "test_balanced_acc", "test_macro_f1", "val_balanced_acc"):
        assert 0.25 < run.metrics[key] <= 1.0, key
    assert set(run.metrics["test_recall"]) == {"T-shirt", "Trouser", "Sneaker", "Bag"}


def test_last_checkpoint_is_the_latest_epoch_even_without_improvement(tmp_path, fashion_slice):
    """Resuming starts from the latest epoch: last.ckpt is written every epoch, not only when val_acc improves."""
    run = fine_tune(tiny_recipe(tmp_path, fashion_slice, "optim.lr=1e-12", "strategy.name=partial",
                                "strategy.trainable_groups=1"))
    last = torch.load(run.dir / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(run.dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert last["epoch"] == 1 and best["epoch"] == 0


def test_strategy_auto_and_lr_find_are_resolved_recorded_and_kept_on_resume(tmp_path, fashion_slice):
    recipe = tiny_recipe(tmp_path, fashion_slice, "strategy.name=auto", "optim.lr=find", "trainer.epochs=2",
                         "data.train_limit=100")
    run = fine_tune(recipe)
    chosen = run.metrics["strategy_auto"]
    assert chosen["chosen"] == "linear-probe" and "23 training samples per class" in chosen["reason"]
    assert run.metrics["strategy"] == "linear-probe" and 1e-7 < run.metrics["lr_find"]["suggestion"] < 10
    assert (run.dir / "lr-find" / "lr_find.png").exists()
    saved = (run.dir / "recipe.yaml").read_text()
    assert "name: linear-probe" in saved and f"lr: {run.metrics['lr_find']['suggestion']}" in saved
    resumed = fine_tune(recipe.model_copy(update={"trainer": recipe.trainer.model_copy(update={"epochs": 3})}),
                        resume=True)
    assert "lr_find" not in resumed.metrics and resumed.metrics["strategy"] == "linear-probe"
