"""A task defined in this file alone registers, trains end to end through `sft train`, and gets `sft eval` and
`sft predict` through the after-training skeleton: the seam holds.

Ink coverage: regress the share of inked pixels of a real Fashion-MNIST image from a backbone's pooled features.
Its loss, monitored value, inputs, export, final metrics, scores and predictions are all its own; nothing outside
this file changes.
"""

import json
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from typer.testing import CliRunner

from sft.cli import app
from sft.data.images import build_transforms, read_samples
from sft.data.samples import read_image
from sft.data.loaders import Inputs
from sft.data.splits import load_splits
from sft.models.backbone import Preprocess
from sft.models.vision import create_backbone
from sft.recipe import VisionRecipe
from sft.tasks import names, register
from sft.tasks.base import TaskBase, load_model_files, read_info, score_batches, with_preprocess
from sft.tasks.base import write_model_files
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

    def write_model(self, run, prepared):
        info = InkInfo(prepared.recipe.model.backbone, prepared.backbone.preprocess, prepared.recipe.data.image_size)
        write_model_files(run.path, prepared.model, info)

    def final_metrics(self, prepared, cached):
        scores = score_batches(prepared.model, prepared.data.eval_dataset("val", False), SquaredError(), batch_size=64)
        return {"val_rmse": scores["rmse"]}

    # -- a finished run: the skeleton's steps
    def run_info(self, run_dir):
        return read_info(run_dir / "model.json", InkInfo, with_preprocess)

    def eval_samples(self, recipe, source, info):
        return read_samples(source.path, format=source.format)

    def load_run(self, run_dir, info, engine="torch"):
        backbone = create_backbone(info.backbone, weights=None)
        return Regressor(*load_model_files(run_dir, backbone.module, nn.Linear(backbone.num_features, 1))).eval()

    def score_run(self, run, recipe, source, samples, model, info, options, *, batch_size, progress):
        scores = score_batches(model, Ink(samples, transform(info)), SquaredError(), batch_size=batch_size)
        return {"data": source.path, **scores}, scores, f"<html><body>RMSE {scores['rmse']:.4f}</body></html>"

    def predict_rows(self, model, info, inputs, options, folder, stream):
        with torch.no_grad():
            return [{"file": f, "ink": round(float(model(transform(info)(read_image(f))[None])), 4)} for f in inputs]


@dataclass
class InkInfo:
    backbone: str
    preprocess: Preprocess
    image_size: int | None


def transform(info):
    return build_transforms(info.preprocess, info.image_size, "none")[1]


class Regressor(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x))


class SquaredError:
    """The skeleton's Scorer: summed squared error, batch by batch."""
    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, outputs, targets, first):
        self.total += float(((outputs.float() - targets) ** 2).sum())
        self.count += len(targets)

    def result(self):
        return {"mse": self.total / self.count, "rmse": (self.total / self.count) ** 0.5, "samples": self.count}


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
    assert (run / "model.safetensors").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert json.loads((run / ".sft-run").read_text()) == {"kind": "run", "task": "ink-coverage"}
    result = CliRunner().invoke(app, ["eval", str(run), "--data", str(fashion_slice["test"])])
    assert result.exit_code == 0, result.output
    scores = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert scores["samples"] == 120 and abs(scores["mse"] - scores["rmse"] ** 2) < 1e-9
    assert (run / "eval-test" / "report.html").is_file() and (run / "eval-test" / "results.json").is_file()
    image = tmp_path / "shirt.png"
    read_samples(fashion_slice["test"]).image(0).save(image)
    result = CliRunner().invoke(app, ["predict", str(run), str(image), "--format", "json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["file"] == str(image) and np.isfinite(row["ink"])
    result = CliRunner().invoke(app, ["export", str(run)])  # what the task does not have says so
    assert result.exit_code == 2 and "ink-coverage has no `sft export`" in result.output
