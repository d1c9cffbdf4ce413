"""Whole detection training epochs, data loading included: `sft train` (task detection) against the loop of
torchvision's detection references (`train_one_epoch`) on the same FCOS, and the test mAP50 each reaches after the
same epochs.

Data: examples/detection/build.py's composites (Fashion-MNIST garments, 1-6 per 160 px canvas, about one canvas in
ten empty, 10 classes, COCO annotations), built into a temporary folder: `train_images` train canvases and a fifth of
that (16 to 200) each for val and test, resized to `size` for the model.

Same model: the ImageNet MobileNetV2 sft ships in feature-map mode (the backbone sft uses by default), an FPN 64
wide on its last three maps with P6/P7, and torchvision's FCOS heads for the 10 classes, built by sft's own
`build_detector` for the plain loop too (anchors = the FPN strides, which is what sft's `anchor_sizes: auto` gives
FCOS; FPN width, batch 16 and `data.augment=none` are examples/detection/detection.yaml's, and what sft's defaults
choose on a CPU). Same loss (FCOS's own loss dict, summed), batch, transform (sft's
training transform with `augment: none`: resize, to float, boxes clamped and sanitised), optimizer (AdamW at sft's
`optim.lr: auto`, 1e-3, every layer training: `strategy.name=full`, as in bench/epoch_throughput.py, because the
default two-stage spends its first epoch on a frozen backbone, which is not the same work), threads (this process's),
precision (sft's default for detection, fp32, used by the plain loop through the same autocast helper) and
channels_last for the backbone (sft's `channels_last: auto`). The plain loop is the references' shape: a Dataset
reading each PNG with its boxes (labels 1..K, 0 is the background), a DataLoader with shuffling and the
references' collate of lists (`tuple(zip(*batch))`), `num_workers` = the cores (max 8, as epoch_throughput's plain
loop), persistent workers, pinned memory on a GPU; per step `model(images, targets)` -> loss dict -> sum -> a
finite check -> backward -> step, at a constant LR. Being a list, its batch goes through torchvision's
GeneralizedRCNNTransform (per-image normalise, a resize at scale 1, a copy into a padded batch), where sft gives the
detector one stacked batch it only normalises (sft.tasks.detection.transform). sft runs with its own loaders
(`num_workers: auto`: 1 on 2 CPU cores), its cosine schedule with warm-up, its per-step logging of the loss and each
loss term, a validation mAP every epoch (not timed: the timer stops at each epoch's last step) and its final val and
test scoring with the best checkpoint (by val_map50).

The figure is each side's images/s over the epochs after the first, from their median epoch (the first pays for
start-up: worker processes, first allocations). Quality is the test mAP50 of both, scored by sft's own
`DetectionScorer` (torchmetrics' MeanAveragePrecision, faster_coco_eval backend, fp32); sft's is its best-val
checkpoint, the plain loop's its last epoch. Seeds: 0 on both sides (data order, weights of the new FPN and heads).

    .venv/bin/python bench/detection_throughput.py [train_images] [size] [epochs] [key=value ...]

(default 1000 128 3; `key=value` arguments are added to sft's recipe, to measure what a setting costs or gives.)

About 6 minutes on 2 quiet CPU cores with the defaults: 3,000 training images a side at about 23 images/s (the
rate docs/benchmarks.md gives for this model and batch on this machine; the smoke runs here shared the cores), plus
sft's validation every epoch and scoring of 200 + 200 canvases, the plain loop's scoring of the same, and building
1,400 canvases. On other processes' cores PyTorch's two threads wait on each other: run it on a quiet machine.
Last line: JSON with ratio (sft images/s / plain images/s, epochs after the first),
quality_gap (sft test mAP50 - plain test mAP50), each side's images/s, mAP50, mAP and seconds, and the settings.
"""

from __future__ import annotations

import math
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
from sft.tasks.detection.data import box_transforms, read_detection
from sft.tasks.detection.metrics import DetectionScorer
from sft.tasks.detection.module import auto_anchor_sizes, build_detector

BACKBONE, WEIGHTS = "torchvision/mobilenet_v2", "imagenet"
DETECTOR, FPN, BATCH, PRECISION, CANVAS, SEED = "fcos", 64, 16, "32", 160, 0


class Boxes(Dataset):
    """(image (3, S, S) float 0..1, {"boxes": (n, 4) xyxy pixels, "labels": (n,) 1..K}) of each annotated image, the
    annotations read once (sft's COCO reader: parsing only)."""

    def __init__(self, annotations: Path, transform):
        self.samples, self.transform = read_detection(annotations, "coco", None), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        image = tv_tensors.Image(torch.from_numpy(np.array(Image.open(self.samples.items[i]).convert("RGB")))
                                 .permute(2, 0, 1))
        target = {"boxes": tv_tensors.BoundingBoxes(torch.as_tensor(self.samples.boxes[i], dtype=torch.float32),
                                                    format="XYXY", canvas_size=tuple(image.shape[-2:])),
                  "labels": torch.as_tensor(self.samples.box_labels[i], dtype=torch.int64) + 1}
        image, target = self.transform(image, target)
        return image.as_subclass(torch.Tensor), {"boxes": target["boxes"].as_subclass(torch.Tensor),
                                                 "labels": target["labels"]}


def collate(batch):
    """The references' utils.collate_fn: a tuple of images and a tuple of targets."""
    return tuple(zip(*batch))


class Detector(nn.Module):
    """The backbone (sft's, in feature-map mode) and the torchvision FCOS on its FPN, as one module: the detector
    calls the backbone without owning it, so its parameters and train/eval mode come through here."""

    def __init__(self, num_classes: int, size: int):
        super().__init__()
        backbone = create_backbone(BACKBONE, WEIGHTS, out="maps")
        self.backbone = backbone.module.to(memory_format=torch.channels_last)
        anchors = auto_anchor_sizes(np.zeros(0), DETECTOR, backbone.reductions, backbone.module)
        self.detector = build_detector(DETECTOR, backbone.module, backbone.channels, num_classes, fpn_channels=FPN,
                                       anchor_sizes=anchors, size=size, preprocess=backbone.preprocess,
                                       score_threshold=0.05, detections=100, channels_last=True)

    def forward(self, images, targets=None):
        return self.detector(images, targets)


def plain_loop(data: Path, classes: list[str], size: int, epochs: int, lr: float) -> dict:
    """The references' loop: images/s after the first epoch, seconds of the job (model, loader, all epochs), and the
    test mAP of the last epoch's model."""
    job_started = time.perf_counter()
    torch.manual_seed(SEED)
    model = Detector(len(classes), size).to(device())
    train_tf, eval_tf = box_transforms(size, "none")
    train = Boxes(data / "train" / "annotations.json", train_tf)
    gpu = device().type == "cuda"
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, num_workers=min(8, os.cpu_count() or 1),
                        collate_fn=collate, pin_memory=gpu, persistent_workers=True,
                        generator=torch.Generator().manual_seed(SEED))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    seconds = []
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        for images, targets in loader:
            images = [image.to(device(), non_blocking=gpu) for image in images]
            targets = [{k: v.to(device(), non_blocking=gpu) for k, v in t.items()} for t in targets]
            with autocast_for(PRECISION, device().type):
                loss_dict = model(images, targets)
            losses = sum(loss for loss in loss_dict.values())
            if not math.isfinite(losses.item()):
                raise SystemExit(f"loss is {losses.item()}, stopping training")
            optimizer.zero_grad(set_to_none=True)
            losses.backward()
            optimizer.step()
        if gpu:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    job = time.perf_counter() - job_started
    scores = {split: evaluate(model, Boxes(data / split / "annotations.json", eval_tf), classes)
              for split in ("val", "test")}
    return {"images_per_second": steady_rate(len(train), seconds), "seconds": job, "epoch_seconds": seconds,
            "train_images": len(train),
            **{f"{split}_{k}": s[k] for split, s in scores.items() for k in ("map50", "map")}}


@torch.no_grad()
def evaluate(model: Detector, dataset: Boxes, classes: list[str]) -> dict:
    """sft's DetectionScorer over the split in order, fp32; the detector's labels 1..K made 0-based on both sides."""
    model.eval()
    scorer, first = DetectionScorer(classes), 0
    for images, targets in DataLoader(dataset, batch_size=BATCH, collate_fn=collate):
        outputs = model([image.to(device()) for image in images])
        found = [{"boxes": o["boxes"].float(), "scores": o["scores"].float(), "labels": o["labels"] - 1}
                 for o in outputs]
        scorer.update(found, [{"boxes": t["boxes"].to(device()), "labels": t["labels"].to(device()) - 1}
                              for t in targets], first)
        first += len(targets)
    return scorer.result()


def sft_run(data: Path, size: int, epochs: int, tmp: str, extra: list[str]) -> dict:
    """`sft train`: images/s after the first epoch (EpochTimer: its training steps, validation excluded), seconds of
    the whole `fine_tune` (validation, final scoring and the model files included) and its metrics."""
    timer = EpochTimer()
    started = time.perf_counter()
    recipe = load_recipe(None, [
        "task=detection", f"data.train={data}/train/annotations.json", f"data.val={data}/val/annotations.json",
        f"data.test={data}/test/annotations.json", f"data.image_size={size}", f"data.batch_size={BATCH}",
        "data.augment=none", f"model.detector={DETECTOR}", f"model.fpn_channels={FPN}", "strategy.name=full",
        f"trainer.epochs={epochs}", "trainer.progress=false", f"seed={SEED}", f"run_dir={tmp}/run",
        f"cache_dir={tmp}/cache", *extra])
    metrics = fine_tune(recipe, callbacks=[timer]).metrics
    return {"images_per_second": steady_rate(metrics["train_samples"], timer.seconds),
            "seconds": time.perf_counter() - started,
            "epoch_seconds": timer.seconds, "metrics": metrics}


def main(train_images: int = 1000, size: int = 128, epochs: int = 3, extra: tuple = ()) -> None:
    if epochs < 2:
        raise SystemExit("epochs must be at least 2: the figure is the epochs after the first")
    with tempfile.TemporaryDirectory() as tmp:
        data = example_composites("detection", Path(tmp) / "data", train_images, CANVAS, SEED)
        sft = sft_run(data, size, epochs, tmp, list(extra))
        m = sft["metrics"]
        if not str(m["precision"]).startswith("32"):
            raise SystemExit(f"sft trained in {m['precision']}, the plain loop in fp32: not the same work")
        classes = read_detection(data / "train" / "annotations.json", "coco", None).classes
        plain = plain_loop(data, classes, size, epochs, m["lr_auto"]["lr"])
    report({**against_the_loop(sft, plain, "map50"),
            "sft_test_map": round(m["test_map"], 4), "plain_test_map": round(plain["test_map"], 4),
            "val_and_test_images": held_out(train_images), "canvas": CANVAS, "size": size, "epochs": epochs,
            "batch_size": BATCH, "detector": DETECTOR, "fpn_channels": FPN, "backbone": BACKBONE,
            "anchor_sizes": m["anchor_sizes"], "plain_num_workers": min(8, os.cpu_count() or 1),
            "sft_overrides": list(extra), "threads": torch.get_num_threads(), "device": str(device()),
            "cores": os.cpu_count()})


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:] if "=" not in a), extra=tuple(a for a in sys.argv[1:] if "=" in a))
