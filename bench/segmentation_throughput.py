"""Whole segmentation training epochs, data loading included: `sft train` (task segmentation) against the plain
PyTorch loop a user would write for the same smp model, and the test mIoU each reaches after the same epochs.

Data: examples/segmentation/build.py's composites (Fashion-MNIST garments on noisy 128 px canvases, 11 classes with
the background), built into a temporary folder: `train_images` train canvases, a fifth of that (16 to 200) each for
val and test, resized to `size` for the model. Both sides train on the same train folder, decoded from PNG per sample.

Same model: the ImageNet MobileNetV2 encoder sft ships (`create_backbone(..., out="maps")`, the backbone sft uses by
default) and smp's FPN decoder 64 wide with its 1x1 head, built by sft's own `DecoderHead` for the plain loop too (the
decoder and width of examples/segmentation/segmentation.yaml, and what sft's defaults choose on a CPU). Same loss
(cross-entropy over the pixels that are not ignore_index 255, set on sft's side: its default is ce+dice), batch
(16, the example's), transform (resize + the backbone's normalisation, no augmentation: `data.augment=none`, the
example's), optimizer (AdamW at sft's `optim.lr: auto`, 1e-3, every layer training: `strategy.name=full`, as in
bench/epoch_throughput.py, because the default two-stage spends its first epoch on a frozen encoder, which is not
the same work), threads (this process's), precision (what sft's `precision: auto` picks here, used by the plain loop
through the same autocast) and channels_last for the convnet. The plain loop: a Dataset that reads the PNG pair
and applies sft's eval transform, a DataLoader with shuffling, `num_workers` = the cores (max 8, as
epoch_throughput's plain loop), persistent workers, pinned memory and non-blocking copies on a GPU; AdamW at a
constant LR. sft runs with its own loaders (`num_workers: auto`: 1 on 2 CPU cores), its cosine schedule with
warm-up, its per-step logging, a validation pass every epoch (not timed: the timer stops at each epoch's last step)
and its final val and test scoring with the best checkpoint (by val_miou) in fp32.

The figure is each side's images/s over the epochs after the first, from their median epoch (the first pays for
start-up: worker processes, first allocations). Quality is the test mIoU of both scored by sft's own code
(`SegmentationScorer` through `score_batches`, fp32, one confusion matrix over the split); sft's is its best-val
checkpoint, the plain loop's its last epoch. Seeds: 0 on both sides (data order, weights of the new decoder).

    .venv/bin/python bench/segmentation_throughput.py [train_images] [size] [epochs] [key=value ...]

(default 1000 128 4; `key=value` arguments are added to sft's recipe, to measure what a setting costs or gives.)

About 6 minutes on 2 quiet CPU cores with the defaults: 4,000 training images a side at about 25 images/s (the
training rate docs/benchmarks.md gives for this model on this machine; the smoke runs here shared the cores), plus
sft's validation every epoch and scoring of 200 + 200 canvases, the plain loop's scoring of the same, and building 1,400
canvases. On other processes' cores PyTorch's two threads wait on each other: run it on a quiet machine.
Last line: JSON with ratio (sft images/s / plain images/s, epochs after the first), quality_gap
(sft test mIoU - plain test mIoU), each side's images/s, mIoU and seconds, and the settings.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from common import against_the_loop, example_composites, held_out, report, steady_rate
from epoch_throughput import EpochTimer, device
from sft import fine_tune, load_recipe
from sft.core.precision import autocast_for
from sft.models.vision import create_backbone
from sft.tasks.base import score_batches
from sft.tasks.segmentation.data import joint_transforms
from sft.tasks.segmentation.metrics import SegmentationScorer
from sft.tasks.segmentation.module import DecoderHead

BACKBONE, WEIGHTS = "torchvision/mobilenet_v2", "imagenet"
DECODER, WIDTH, BATCH, IGNORE, CANVAS, SEED = "fpn", 64, 16, 255, 128, 0


class Pairs(Dataset):
    """(normalised image (3, S, S), mask (S, S) int64) of each images/X.png and masks/X.png: what a user writes."""

    def __init__(self, folder: Path, transform):
        self.images, self.transform = sorted((folder / "images").glob("*.png")), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        path = self.images[i]
        image = tv_tensors.Image(torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(np.array(Image.open(path.parent.parent / "masks" / path.name),
                                                         np.int64)))
        image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


class Segmenter(nn.Module):
    """The encoder's maps, the input first, through smp's decoder and head: logits at the input size."""

    def __init__(self, num_classes: int):
        super().__init__()
        backbone = create_backbone(BACKBONE, WEIGHTS, out="maps")
        self.encoder, self.preprocess = backbone.module, backbone.preprocess
        self.decoder = DecoderHead(DECODER, backbone.channels, backbone.reductions, num_classes, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder([x, *self.encoder(x)])


def plain_loop(data: Path, classes: list[str], size: int, epochs: int, precision: str, lr: float) -> dict:
    """The hand-written loop: images/s after the first epoch, seconds of the job (model, loader, all epochs), and the
    val and test mIoU of the last epoch's model."""
    job_started = time.perf_counter()
    torch.manual_seed(SEED)
    model = Segmenter(len(classes)).to(device()).to(memory_format=torch.channels_last)
    _, transform = joint_transforms(model.preprocess, size, "none", IGNORE)
    train = Pairs(data / "train", transform)
    gpu = device().type == "cuda"
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, num_workers=min(8, os.cpu_count() or 1),
                        pin_memory=gpu, persistent_workers=True, generator=torch.Generator().manual_seed(SEED))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    seconds = []
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        for x, y in loader:
            x = x.to(device(), non_blocking=gpu).contiguous(memory_format=torch.channels_last)
            y = y.to(device(), non_blocking=gpu)
            with autocast_for(precision, device().type):
                loss = nn.functional.cross_entropy(model(x).float(), y, ignore_index=IGNORE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if gpu:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    job = time.perf_counter() - job_started
    miou = {split: score_batches(model, Pairs(data / split, transform), SegmentationScorer(classes, IGNORE),
                                 batch_size=BATCH)["miou"] for split in ("val", "test")}
    return {"images_per_second": steady_rate(len(train), seconds), "seconds": job, "epoch_seconds": seconds,
            "train_images": len(train), **{f"{k}_miou": v for k, v in miou.items()}}


def sft_run(data: Path, size: int, epochs: int, tmp: str, extra: list[str]) -> dict:
    """`sft train`: images/s after the first epoch (EpochTimer: its training steps, validation excluded), seconds of
    the whole `fine_tune` (validation, final scoring and the model files included) and its metrics."""
    timer = EpochTimer()
    started = time.perf_counter()
    recipe = load_recipe(None, [
        "task=segmentation", f"data.train={data}/train", f"data.val={data}/val", f"data.test={data}/test",
        f"data.image_size={size}", f"data.batch_size={BATCH}", "data.augment=none", f"model.decoder={DECODER}",
        f"model.decoder_channels={WIDTH}", "strategy.name=full", "optim.loss=cross-entropy", f"trainer.epochs={epochs}",
        "trainer.progress=false",
        f"seed={SEED}", f"run_dir={tmp}/run", f"cache_dir={tmp}/cache", *extra])
    metrics = fine_tune(recipe, callbacks=[timer]).metrics
    return {"images_per_second": steady_rate(metrics["train_samples"], timer.seconds),
            "seconds": time.perf_counter() - started,
            "epoch_seconds": timer.seconds, "metrics": metrics}


def main(train_images: int = 1000, size: int = 128, epochs: int = 4, extra: tuple = ()) -> None:
    if epochs < 2:
        raise SystemExit("epochs must be at least 2: the figure is the epochs after the first")
    with tempfile.TemporaryDirectory() as tmp:
        data = example_composites("segmentation", Path(tmp) / "data", train_images, CANVAS, SEED)
        classes = (data / "classes.txt").read_text().split("\n")[:-1]
        sft = sft_run(data, size, epochs, tmp, list(extra))
        m = sft["metrics"]
        plain = plain_loop(data, classes, size, epochs, m["precision"], m["lr_auto"]["lr"])
    report({**against_the_loop(sft, plain, "miou"),
            "val_and_test_images": held_out(train_images), "size": size, "epochs": epochs, "batch_size": BATCH,
            "decoder": DECODER, "decoder_channels": WIDTH, "backbone": BACKBONE,
            "plain_num_workers": min(8, os.cpu_count() or 1), "sft_overrides": list(extra),
            "threads": torch.get_num_threads(), "device": str(device()), "cores": os.cpu_count()})


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:] if "=" not in a), extra=tuple(a for a in sys.argv[1:] if "=" in a))
