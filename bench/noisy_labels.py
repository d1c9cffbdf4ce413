"""Label noise: 10 % of a Fashion-MNIST training subset flipped to another class (seeded, recorded). How well does
`sft audit` find the flips, and what does training on noisy, audited-and-cleaned and clean labels give?

5,000 training images (official train split, stratified) and 2,000 test images, ImageNet MobileNetV2 at 96 px;
the audit uses cross-validated linear probes on cached features and cleanlab; "cleaned" excludes the samples the
audit flags as label issues (data.exclude). Training: linear probes on the cached features. The flip seed (default
0) picks which labels are flipped: the audit's settings were chosen on seed 0 and checked on others.

    .venv/bin/python bench/noisy_labels.py [image_size] [flip_seed]
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import CLASSES, OUT, fashion_npz, report
from sft import fine_tune, load_recipe
from sft.tasks import get_task
from sft.tasks.classification.tools.audit import audit_data

NOISE = 0.10


def noisy_copy(clean: Path, seed: int) -> tuple[Path, set[str]]:
    data = np.load(clean)
    x, y = data["x"], data["y"].copy()
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y), int(NOISE * len(y)), replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10  # always another class
    path = OUT / ("fashion_noisy.npz" if seed == 0 else f"fashion_noisy_{seed}.npz")
    np.savez(path, x=x, y=y)
    np.savetxt(path.with_name(path.stem + "_flipped.txt"), np.sort(flipped), fmt="%d")
    return path, {f"{path}#{i}" for i in flipped}


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 96
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    start = time.perf_counter()
    clean, test = fashion_npz("train", 5000), fashion_npz("t10k", 2000)
    noisy, flipped = noisy_copy(clean, seed)
    with tempfile.TemporaryDirectory() as tmp:
        def recipe(train, name, *extra):
            return load_recipe(None, [
                f"data.train={train}", f"data.test={test}", f"data.classes={CLASSES}", f"data.image_size={size}",
                "data.augment=none", "strategy.name=linear-probe", "optim.lr=0.003", "trainer.epochs=15",
                "trainer.progress=false", f"run_dir={tmp}/{name}", f"cache_dir={tmp}/cache", *extra])

        audit = audit_data(get_task("image-classification"), recipe(noisy, "audit"), Path(tmp) / "audit")
        audit_minutes = (time.perf_counter() - start) / 60
        found = {s.sample for s in audit.suspects if s.kind == "label_issue"}
        hits = len(found & flipped)
        precision, recall = hits / max(len(found), 1), hits / len(flipped)
        exclude = Path(tmp) / "label_issues.csv"
        with open(exclude, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sample"])
            writer.writerows([s] for s in sorted(found))
        acc = {name: fine_tune(recipe(train, name, *extra)).metrics["test_acc"]
               for name, train, extra in (("noisy", noisy, ()), ("cleaned", noisy, (f"data.exclude={exclude}",)),
                                          ("clean", clean, ()))}
    report({"image_size": size, "flip_seed": seed, "flipped": len(flipped), "flagged": len(found),
            "audit_precision": round(precision, 4),
            "audit_recall": round(recall, 4),
            "audit_f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
            "acc_noisy": round(acc["noisy"], 4), "acc_cleaned": round(acc["cleaned"], 4),
            "acc_clean": round(acc["clean"], 4),
            "audit_minutes": round(audit_minutes, 2), "minutes": round((time.perf_counter() - start) / 60, 2)})


if __name__ == "__main__":
    main()
