"""Semantic segmentation on real composites: an FPN decoder on ImageNet MobileNetV2 against the same model from random
weights, the same recipe and budget, scored by mIoU on the test composites; wall-clock minutes for both, on this
machine.

The composites are examples/segmentation/build.py's: Fashion-MNIST garments (1-4 per canvas, occluding) on a noisy
background, 11 classes with the background; 3000 train, 300 val, 500 test canvases of 128 px with garments of
24-64 px (the geometry the issue suggested). Both runs: the full fine-tune with AdamW at 1e-3 (cosine decay with
warm-up), cross-entropy + Dice, smp's FPN decoder 64 wide, at 128 px, 4 epochs without augmentation.

Why these (session 8, one thread per run on one core each, 3000 composites, 4 epochs, FPN 64, light augmentation
unless said): 64 px canvases (garments 20-40 px) seen at 128 px gave test mIoU 0.5248; the same garments on 128 px
canvases 0.5454 (less occlusion); there, lr 2e-3 0.5439, no augmentation 0.5767 (random resized crops slow a run
this short; the runs are under-fitted, not over-fitted); two-stage instead of full 0.4866 on the 64 px canvases
(0.83x the time). The earlier default, a Unet 64 wide on the 64 px
canvases at 64 px, gave 0.4424 after 8 epochs: at 64 px MobileNetV2's last map is 2x2 and the decoder split one
garment across classes. Per training step (one thread, 16 images, forward + backward + AdamW, no data loading):
Unet 64 at 64 px 38.9 img/s, FPN 64 at 64 px 49.4, at 96 px 29.0, at 128 px 19.5; DeepLabV3+ 64 at 128 px 13.7, Unet
32 at 128 px 12.2 (a Unet's full-resolution blocks cost more than the encoder; the FPN predicts at stride 4).

Longer is not the way to 0.70 (session 10, one thread on one core, the same data and recipe): 8 epochs instead of 4
gave test mIoU 0.6030 (validation by epoch 0.40, 0.47, 0.54, 0.54, 0.57, 0.61, 0.62, 0.62), +0.025 for twice the time.
Since session 10 the Dice term no longer builds smp's one-hot target (sft.tasks.segmentation.losses): the pretrained
run trains at 24.9 img/s against 21.1 before, and the bench takes 17.4 minutes instead of 19.5.
Session 11 (one thread per run, the same recipe): the test mIoU follows the images the model is shown, not how many
different ones: 3000 x 4 epochs 0.5767, 6000 x 2 0.5689, 12000 x 1 0.5830 (the builder's fresh composites, same steps),
and on 1000 composites 4 epochs 0.4339, 8 epochs 0.5294. A larger input is no cheaper way up: on those 1000, 4 epochs
at 192 px gave 0.4986 in about the time of 8 epochs at 128 px (585 against 554 s), 256 px 0.5332 in twice it (1095 s).
So 0.70 wants many times this CPU's 20 minutes: on a GPU, try `bench/segmentation.py 3000 16 256`.

    .venv/bin/python bench/segmentation.py [train_images] [epochs] [image_size]

image_size is the model's input: the 128 px canvases are resized to it (the data stays the same).

Run it on a quiet machine: with other processes on the same cores, PyTorch's two OpenMP threads wait on each other
and a training step is several times slower than with one thread (measured: 1.7 against 13.6 images/s, load 8).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import OUT, report
from sft import fine_tune, load_recipe

BUILD = Path(__file__).parents[1] / "examples" / "segmentation" / "build.py"
CANVAS, SIDE = 128, (24, 64)  # the canvas side and garment sides in pixels (the geometry)


def composites(train: int) -> Path:
    """The bench's data set, built once and reused (the builder's marker says how it was made)."""
    spec = importlib.util.spec_from_file_location("segmentation_build", BUILD)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    out = OUT / f"segmentation-{train}-{CANVAS}-{SIDE[0]}-{SIDE[1]}"
    if not (out / builder.MARKER).exists():
        builder.build(out, train=train, val=300, test=500, size=CANVAS, seed=0, side=SIDE)
    return out


def main() -> None:
    train = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    size = int(sys.argv[3]) if len(sys.argv) > 3 else CANVAS  # the model's input: the canvases resized to it
    data = composites(train)
    results, minutes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:  # the runs stay in bench/out (the README's report picture)
        for weights in ("imagenet", "none"):
            started = time.perf_counter()
            recipe = load_recipe(None, [
                "task=segmentation", f"data.train={data}/train", f"data.val={data}/val", f"data.test={data}/test",
                f"data.image_size={size}", "data.augment=none", "data.batch_size=16",
                "model.backbone=torchvision/mobilenet_v2",
                f"model.weights={weights}", "model.decoder=fpn", "model.decoder_channels=64", "strategy.name=full",
                "optim.lr=0.001", "optim.loss=ce+dice", f"trainer.epochs={epochs}", "trainer.progress=false",
                f"run_dir={OUT}/segmentation-run-{weights}", f"cache_dir={tmp}/cache"])
            results[weights] = fine_tune(recipe, overwrite=True).metrics
            minutes[weights] = (time.perf_counter() - started) / 60
    pretrained, random = results["imagenet"], results["none"]
    report({"miou_pretrained": round(pretrained["test_miou"], 4), "miou_random": round(random["test_miou"], 4),
            "pixel_acc": round(pretrained["test_pixel_acc"], 4), "minutes": round(sum(minutes.values()), 2),
            "minutes_pretrained": round(minutes["imagenet"], 2), "minutes_random": round(minutes["none"], 2),
            "train_images": train, "epochs": epochs, "canvas": CANVAS, "image_size": size, "object_sides": list(SIDE),
            "decoder": "fpn",
            "iou_pretrained": {k: None if v is None else round(v, 3) for k, v in pretrained["test_iou"].items()},
            "train_images_per_second": pretrained["samples_per_second"], "precision": pretrained["precision"],
            "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
