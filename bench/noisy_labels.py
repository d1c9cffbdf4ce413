"""Label noise: 10 % of a Fashion-MNIST training subset flipped to another class (seeded, recorded). How well does
`sft audit` find the flips, and what does training on noisy, audited-and-cleaned and clean labels give?

5,000 training images (official train split, stratified) and 2,000 test images, ImageNet MobileNetV2 at 96 px;
the audit uses cross-validated linear probes on cached features and cleanlab; "cleaned" excludes the samples the
audit flags as label issues (data.exclude). Training: linear probes on the cached features.

    .venv/bin/python bench/noisy_labels.py [image_size]
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import CLASSES, OUT, fashion_npz, report
from sft import fine_tune, load_recipe
from sft.engine import audit_data

NOISE, SEED = 0.10, 0


def noisy_copy(clean: Path) -> tuple[Path, set[str]]:
    data = np.load(clean)
    x, y = data["x"], data["y"].copy()
    rng = np.random.default_rng(SEED)
    flipped = rng.choice(len(y), int(NOISE * len(y)), replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10  # always another class
    path = OUT / "fashion_noisy.npz"
    np.savez(path, x=x, y=y)
    np.savetxt(OUT / "fashion_noisy_flipped.txt", np.sort(flipped), fmt="%d")
    return path, {f"{path}#{i}" for i in flipped}


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 96
    clean, test = fashion_npz("train", 5000), fashion_npz("t10k", 2000)
    noisy, flipped = noisy_copy(clean)
    with tempfile.TemporaryDirectory() as tmp:
        def recipe(train, name, *extra):
            return load_recipe(None, [
                f"data.train={train}", f"data.test={test}", f"data.classes={CLASSES}", f"data.image_size={size}",
                "data.augment=none", "strategy.name=linear-probe", "optim.lr=0.003", "trainer.epochs=15",
                "trainer.progress=false", f"run_dir={tmp}/{name}", f"cache_dir={tmp}/cache", *extra])

        audit = audit_data(recipe(noisy, "audit"), Path(tmp) / "audit")
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
    report({"image_size": size, "flipped": len(flipped), "flagged": len(found),
            "audit_precision": round(precision, 4),
            "audit_recall": round(recall, 4),
            "audit_f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
            "acc_noisy": round(acc["noisy"], 4), "acc_cleaned": round(acc["cleaned"], 4),
            "acc_clean": round(acc["clean"], 4)})


if __name__ == "__main__":
    main()
