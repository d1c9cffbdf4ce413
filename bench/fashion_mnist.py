"""Full fine-tune of ImageNet MobileNetV2 on all of Fashion-MNIST: test accuracy on the official 10,000-image test
split, and wall-clock minutes (training, validation and test), on this machine.

60,000 training images (6,000 held out, stratified, for validation and checkpoint selection), every layer trained
from the start, AdamW with cosine decay and warm-up, label smoothing 0.1, sft's defaults otherwise.

    .venv/bin/python bench/fashion_mnist.py [image_size] [epochs] [augment]
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

from common import CLASSES, FASHION, report
from sft import fine_tune, load_recipe


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    augment = sys.argv[3] if len(sys.argv) > 3 else "light"
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(None, [
            f"data.train={FASHION}/train-images-idx3-ubyte.gz", f"data.test={FASHION}/t10k-images-idx3-ubyte.gz",
            f"data.classes={CLASSES}", f"data.image_size={size}", f"data.augment={augment}", "data.batch_size=128",
            "model.backbone=torchvision/mobilenet_v2", "model.weights=imagenet", "strategy.name=full",
            "optim.name=adamw", "optim.lr=0.003", "optim.label_smoothing=0.1", f"trainer.epochs={epochs}",
            "trainer.progress=false", f"run_dir={tmp}/run", f"cache_dir={tmp}/cache"])
        started = time.perf_counter()
        run = fine_tune(recipe)
        minutes = (time.perf_counter() - started) / 60
    m = run.metrics
    report({"test_accuracy": round(m["test_acc"], 4), "minutes": round(minutes, 2), "image_size": size,
            "epochs": epochs, "augment": augment, "train_images_per_second": m["samples_per_second"], "precision": m["precision"],
            "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
