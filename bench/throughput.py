"""Full fine-tuning speed: sft (Lightning, precision and memory format chosen for this hardware) against a plain
fp32 PyTorch loop, same model (ImageNet MobileNetV2), batch (32), optimizer (AdamW) and images (224 px).

Only the training step is timed (forward, backward, optimizer), after warm-up steps, in both. sft's settings are its
defaults: `precision: auto` (bf16-mixed where the CPU has native bf16 (AMX/AVX512-BF16) or on a GPU, else fp32) and
`channels_last: auto` (on for convnets). The figures therefore depend on the CPU; the bench prints what it found.

    .venv/bin/python bench/throughput.py
"""

from __future__ import annotations

import tempfile
import time

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from common import CLASSES, fashion_npz, report
from sft import fine_tune, load_recipe
from sft.models.vision import create_backbone
from sft.data.images import ImageDataset, build_transforms
from sft.core.precision import cpu_has_bf16
from sft.data.images import read_samples

BATCH, SIZE, WARMUP, STEPS = 32, 224, 2, 8


class StepTimer(Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.started)


def images_per_second(step_times: list[float]) -> float:
    timed = step_times[WARMUP:WARMUP + STEPS]
    return BATCH * len(timed) / sum(timed)


def plain_loop(path) -> float:
    backbone = create_backbone("torchvision/mobilenet_v2", "imagenet")
    model = torch.nn.Sequential(backbone.module, torch.nn.Linear(backbone.num_features, 10))
    _, eval_tf = build_transforms(backbone.preprocess, SIZE, "none")
    loader = DataLoader(ImageDataset(read_samples(path), eval_tf), batch_size=BATCH, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for x, y in loader:
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
        if len(times) == WARMUP + STEPS:
            break
    return images_per_second(times)


def sft_loop(path) -> tuple[float, str]:
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(None, [
            f"data.train={path}", f"data.classes={CLASSES}", f"data.image_size={SIZE}", "data.augment=none",
            f"data.batch_size={BATCH}", "data.val_limit=32", "strategy.name=full", "optim.name=adamw",
            "trainer.epochs=1", "trainer.progress=false", f"run_dir={tmp}/run", f"cache_dir={tmp}/cache"])
        run = fine_tune(recipe, callbacks=[timer])
        return images_per_second(timer.times), run.metrics["precision"]


def main() -> None:
    path = fashion_npz("train", BATCH * (WARMUP + STEPS) * 10 // 9 + 10)  # 10 % goes to validation in sft
    sft_ips, precision = sft_loop(path)
    plain_ips = plain_loop(path)
    report({"plain_fp32_images_per_second": round(plain_ips, 2), "sft_images_per_second": round(sft_ips, 2),
            "speedup": round(sft_ips / plain_ips, 2), "sft_precision": precision,
            "cpu_native_bf16": cpu_has_bf16(), "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
