"""A task defined in this file alone registers and trains end to end through `sft train`: the seam holds.

Ink coverage: regress the share of inked pixels of a real Fashion-MNIST image from a backbone's pooled features.
Its loss, monitored value, inputs, export and final metrics are all its own; nothing outside this file changes.
"""

import json

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset
from typer.testing import CliRunner

from sft.cli import app
from sft.data.images import build_transforms, read_samples
from sft.data.loaders import Inputs
from sft.data.splits import load_splits
from sft.models.vision import create_backbone
from sft.recipe import VisionRecipe
from sft.tasks import names, register
from sft.tasks.base import TaskBase
from sft.training.module import FineTuneModule
from sft.training.trainer import Monitor


class Ink(Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        image = self.samples.image(i)
        return self.transform(image), torch.tensor([(np.asarray(image) > 32).mean()], dtype=torch.float32)


class InkModule(FineTuneModule):
    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.check_finite(nn.functional.mse_loss(self(x).float(), y))
        self.log("train_loss", loss, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_mse", nn.functional.mse_loss(self(x).float(), y), batch_size=len(y))


class InkCoverage(TaskBase):
    name = "ink-coverage"
    description = "the share of inked pixels of an image"
    monitor = Monitor("val_mse", "min")
    recipe = VisionRecipe  # the image tasks' shared sections: nothing of its own

    def load_splits(self, recipe):
        read = lambda source, classes: read_samples(source.path, format=source.format, classes=classes)  # noqa: E731
        return load_splits(recipe.data, recipe.seed, read, classes=recipe.data.classes)

    def build_backbone(self, recipe):
        return create_backbone(recipe.model.backbone, recipe.model.weights)

    def build_inputs(self, backbone, recipe):
        transform = build_transforms(backbone.preprocess, recipe.data.image_size, "none")[1]
        return Inputs(lambda s: Ink(s, transform), lambda s: Ink(s, transform), None, key=str(transform))

    def build_module(self, recipe, backbone, splits, schedule, channels_last):
        return InkModule(backbone.module, nn.Linear(backbone.num_features, 1), schedule, recipe.optim,
                         recipe.trainer.epochs, channels_last)

    def export(self, run, prepared):
        save_file({k: v.contiguous() for k, v in prepared.model.state_dict().items()}, run.path / "ink.safetensors")

    def final_metrics(self, prepared, cached):
        model, data = prepared.model.eval(), prepared.data
        with torch.no_grad():
            pairs = [(model(x), y) for x, y in torch.utils.data.DataLoader(data.eval_dataset("val", False), 64)]
        return {"val_rmse": float(torch.cat([(p - y) ** 2 for p, y in pairs]).mean().sqrt())}


def test_a_task_in_one_file_trains_through_sft_train(tmp_path, fashion_slice):
    register("ink-coverage", f"{__name__}:InkCoverage")
    assert "ink-coverage" in names()
    recipe = tmp_path / "ink.yaml"
    recipe.write_text(f"task: ink-coverage\ndata:\n  train: {fashion_slice['train']}\n  image_size: 32\n"
                      f"  batch_size: 32\nmodel:\n  backbone: timm/test_efficientnet\n  weights: none\n"
                      f"strategy:\n  name: full\noptim:\n  lr: 0.003\ntrainer:\n  epochs: 2\n  progress: false\n"
                      f"run_dir: {tmp_path / 'run'}\ncache_dir: {tmp_path / 'cache'}\n")
    result = CliRunner().invoke(app, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_mse"] is not None and np.isfinite(metrics["val_rmse"]) and metrics["epochs"] == 2
    assert abs(metrics["val_mse"] - metrics["val_rmse"] ** 2) < 1e-3  # the best checkpoint is the exported model
    assert (run / "ink.safetensors").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert json.loads((run / ".sft-run").read_text()) == {"kind": "run", "task": "ink-coverage"}
    result = CliRunner().invoke(app, ["eval", str(run)])
    assert result.exit_code == 2 and "ink-coverage has no `sft eval`" in result.output
