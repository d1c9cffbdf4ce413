"""The seed's loop as written against sft's linear probe: same backbone, data, epochs, batch and optimizer.

The seed's loop (../shared/seed) runs the frozen backbone forward on every batch of every epoch, in fp32, in train
mode (so BatchNorm statistics drift while "frozen"), on un-normalised pixels. sft's linear probe computes the
backbone's features once, in eval mode, with the backbone's own normalisation, and trains the head on the cache.
Both: ImageNet MobileNetV2, Fashion-MNIST 5,000 train / 2,000 test (stratified slices of the official splits) at
96 px, Adam lr 1e-3, 10 epochs, batch 64. sft holds out 10 % of its 5,000 for validation (it trains on less).
Timed end to end (training and test evaluation), cold feature cache.

    .venv/bin/python bench/linear_probe.py
"""

from __future__ import annotations

import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from common import CLASSES, fashion_npz, report
from sft import fine_tune, load_recipe
import sft.training.fit  # noqa: F401,E402  (Lightning's import is not per-run work: keep it out of the timings)
from sft.models.vision import classify_imagenet_head
from sft.data.images import read_samples

SIZE, EPOCHS, BATCH = 96, 10, 64


class SeedData(Dataset):
    """The seed's data path: PIL image -> ToTensor (no normalisation), resized to the same 96 px."""

    def __init__(self, path):
        self.samples = read_samples(path)
        self.transform = transforms.Compose([transforms.Resize(SIZE), transforms.ToTensor()])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.transform(self.samples.image(i)), int(self.samples.labels[i])


def seed_loop(train_path, test_path) -> tuple[float, float]:
    started = time.perf_counter()
    model = classify_imagenet_head("torchvision/mobilenet_v2")  # torchvision's model with the shipped weights
    for param in model.parameters():
        param.requires_grad = False
    model.classifier[1] = nn.Linear(1280, 10)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.classifier[1].parameters())
    train_loader = DataLoader(SeedData(train_path), batch_size=BATCH, shuffle=True)
    for epoch in range(EPOCHS):
        for inputs, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in DataLoader(SeedData(test_path), batch_size=256):
            correct += (model(inputs).argmax(1) == labels).sum().item()
            total += len(labels)
    return correct / total, time.perf_counter() - started


def sft_probe(train_path, test_path) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(None, [
            f"data.train={train_path}", f"data.test={test_path}", f"data.classes={CLASSES}",
            f"data.image_size={SIZE}", "data.augment=none", f"data.batch_size={BATCH}",
            "model.backbone=torchvision/mobilenet_v2", "model.weights=imagenet", "strategy.name=linear-probe",
            "optim.name=adam", "optim.lr=0.001", "optim.weight_decay=0", "optim.scheduler=constant",
            f"trainer.epochs={EPOCHS}", "trainer.progress=false", f"run_dir={tmp}/run", f"cache_dir={tmp}/cache"])
        started = time.perf_counter()
        run = fine_tune(recipe)
        return run.metrics["test_acc"], time.perf_counter() - started


def main() -> None:
    train_path, test_path = fashion_npz("train", 5000), fashion_npz("t10k", 2000)
    torch.manual_seed(0)
    sft_acc, sft_s = sft_probe(train_path, test_path)
    torch.manual_seed(0)
    seed_acc, seed_s = seed_loop(train_path, test_path)
    report({"seed_seconds": round(seed_s, 1), "sft_seconds": round(sft_s, 1),
            "speedup": round(seed_s / sft_s, 2), "seed_accuracy": round(seed_acc, 4), "sft_accuracy": round(sft_acc, 4),
            "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
