"""Whole training epochs, data loading included: `sft train` with its default settings against the plain loop a user
would write, and both against the limit (the same step on batches already on the device).

Same model (ImageNet MobileNetV2 + a new linear layer, every layer training), data (Fashion-MNIST slice, decoded from
the .npz source per sample as both pipelines do), transform (the backbone's resize + normalise, no augmentation),
batch (64), optimizer (AdamW) and precision (sft's `precision: auto` for this machine, used by the plain loop too).
The plain loop is the usual hand-written one: DataLoader with shuffling, `num_workers` = the cores (max 8), pinned
memory and non-blocking copies on a GPU, channels_last for the convnet. The figure is the second epoch (the first
pays for start-up in both). sft runs with `strategy.name=full` (the default two-stage would spend its first epoch
on cached features, which is not the same work) and nothing else set. The seconds of each whole job are reported
too (sft's also validates every epoch, scores val and test and writes the model: work the plain loop skips).

    .venv/bin/python bench/epoch_throughput.py [train_images] [size]      # default 1440 64
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from common import CLASSES, fashion_npz, report
from sft import fine_tune, load_recipe
from sft.core.precision import autocast_for
from sft.data.images import ImageDataset, build_transforms, read_samples
from sft.models.vision import create_backbone

BATCH = 64


class EpochTimer(Callback):
    """Seconds of each training epoch, from its first batch request to its last step (validation excluded)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        self.started = self.last_step = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if torch.cuda.is_available() and batch_idx == trainer.num_training_batches - 1:
            torch.cuda.synchronize()  # the plain loop synchronises at its epoch's end too
        self.last_step = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):  # Lightning validates before this hook: stop at the last step
        self.seconds.append(self.last_step - self.started)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_and_data(path, size: int):
    backbone = create_backbone("torchvision/mobilenet_v2", "imagenet")
    model = torch.nn.Sequential(backbone.module, torch.nn.Linear(backbone.num_features, len(CLASSES)))
    _, eval_tf = build_transforms(backbone.preprocess, size, "none")
    return model.to(device()).to(memory_format=torch.channels_last), ImageDataset(read_samples(path), eval_tf)


def step_fn(model, precision: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x, y):
        with autocast_for(precision, device().type):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def plain_loop(path, size: int, precision: str, train_images: int) -> tuple[float, float]:
    """(images/s of the second epoch, seconds of the whole job: model, loader and both epochs)."""
    job_started = time.perf_counter()
    model, data = model_and_data(path, size)
    data = torch.utils.data.Subset(data, range(train_images))  # as many as sft trains on (it holds out val)
    gpu = device().type == "cuda"
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=min(8, os.cpu_count() or 1),
                        pin_memory=gpu, persistent_workers=True)
    step = step_fn(model.train(), precision)
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        for x, y in loader:
            x = x.to(device(), non_blocking=gpu).contiguous(memory_format=torch.channels_last)
            step(x, y.to(device(), non_blocking=gpu))
        if gpu:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return len(data) / seconds[1], time.perf_counter() - job_started


def limit(path, size: int, precision: str, train_images: int) -> float:
    """The same steps on batches decoded and transformed beforehand and already on the device."""
    model, data = model_and_data(path, size)
    batches = []
    for start in range(0, train_images, BATCH):
        items = [data[i] for i in range(start, min(start + BATCH, train_images))]
        x = torch.stack([x for x, _ in items]).to(device()).contiguous(memory_format=torch.channels_last)
        batches.append((x, torch.tensor([y for _, y in items], device=device())))
    step = step_fn(model.train(), precision)
    for x, y in batches[:2]:
        step(x, y)  # warm-up
    if device().type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for x, y in batches:
        step(x, y)
    if device().type == "cuda":
        torch.cuda.synchronize()
    return train_images / (time.perf_counter() - started)


def sft_run(path, size: int) -> tuple[float, int, dict, float]:
    """(images/s of the second epoch, training samples, metrics, seconds of the whole `fine_tune`)."""
    timer = EpochTimer()
    job_started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(None, [f"data.train={path}", f"data.classes={CLASSES}", "strategy.name=full",
                                    "trainer.epochs=2", "trainer.progress=false", f"run_dir={tmp}/run",
                                    f"cache_dir={tmp}/cache", f"data.image_size={size}"])
        run = fine_tune(recipe, callbacks=[timer])
        job = time.perf_counter() - job_started
    return run.metrics["train_samples"] / timer.seconds[1], run.metrics["train_samples"], run.metrics, job



def main(train_images: int = 1440, size: int = 64) -> None:
    path = fashion_npz("train", train_images * 10 // 9)  # sft holds out 10 % for validation
    sft_ips, trained, metrics, sft_job = sft_run(path, size)
    precision = metrics["precision"]
    plain_ips, plain_job = plain_loop(path, size, precision, trained)
    limit_ips = limit(path, size, precision, trained)
    report({"sft_images_per_second": round(sft_ips, 1), "plain_images_per_second": round(plain_ips, 1),
            "ratio": round(sft_ips / plain_ips, 3), "limit_images_per_second": round(limit_ips, 1),
            "limit_ratio": round(sft_ips / limit_ips, 3),
            # the whole job: sft's also validates every epoch, scores val and test in fp32 and writes the model
            "sft_job_seconds": round(sft_job, 1), "plain_job_seconds": round(plain_job, 1), "precision": precision, "train_images": trained,
            "size": size, "sft_num_workers": metrics.get("num_workers"), "device": str(device()),
            "cores": os.cpu_count()})


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
