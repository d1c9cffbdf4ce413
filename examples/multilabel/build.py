"""Build a real-data multi-label image set: 2×2 mosaics of Fashion-MNIST garments, each image labelled with the
garment classes it shows.

No package in the registries we may use ships a multi-label image set, so this makes one from the Debian
`dataset-fashion-mnist` package (the segmentation builder's reader and refusals are reused): each of the four cells
holds a garment with probability 3/4 (at least one per image), enlarged to half the image size; the labels are the
distinct classes present, so an image has one to four. A CSV manifest per split gives its path and its labels joined
by '|'. Val garments come from the official train split after the train ones, test from the official test split.
Seeded, so every run and benchmark sees the same pixels.

    <out>/<split>.csv                       path,labels (paths relative to the manifest)
    <out>/<split>/00000.png                 the mosaics

    python examples/multilabel/build.py        # 4000/1000/2000 images at 64 px into examples/multilabel/data
    python examples/multilabel/build.py --train 60 --val 20 --test 20 --out /tmp/mosaics
"""

from __future__ import annotations

import argparse
import csv
import json
import runpy
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sft.core.atomic import atomic_write_dir

# examples/ is not a package: the segmentation builder's reader and refusals, run from its file
_seg = runpy.run_path(str(Path(__file__).parents[1] / "segmentation" / "build.py"))
CLASSES, FASHION, MARKER, SOURCES = (_seg[k] for k in ("CLASSES", "FASHION", "MARKER", "SOURCES"))
Refused, read_fashion, check_out, check_request = (_seg[k] for k in ("Refused", "read_fashion", "check_out",
                                                                     "check_request"))

FILLED = 0.75  # the chance that a cell holds a garment


def mosaic(cells: list[np.ndarray | None], size: int) -> Image.Image:
    """Four 28 px garments (None: an empty cell) as a 2×2 RGB mosaic of side `size`."""
    half = size // 2
    out = Image.new("L", (2 * half, 2 * half))
    for k, cell in enumerate(cells):
        if cell is not None:
            out.paste(Image.fromarray(cell).resize((half, half), Image.BICUBIC), ((k % 2) * half, (k // 2) * half))
    return out.convert("RGB")


def build(out: Path, train: int, val: int, test: int, size: int = 64, seed: int = 0,
          overwrite: bool = False) -> dict:
    """Write the set (layout in the module docstring) and the marker; return the summary."""
    out = Path(out)
    counts = {"train": train, "val": val, "test": test}
    check_request(out, counts, size, 1, overwrite)

    def write(tmp: str) -> None:
        root, sources = Path(tmp), {prefix: read_fashion(prefix) for prefix in ("train", "t10k")}
        for k, split in enumerate(counts):
            prefix, lo, hi = SOURCES[split]
            images, labels = sources[prefix]
            rng = np.random.default_rng([seed, k])  # per split: changing --train leaves val and test as they were
            (root / split).mkdir(parents=True)
            rows = []
            for j in range(counts[split]):
                filled = rng.random(4) < FILLED
                filled[rng.integers(4)] = True  # at least one garment
                picks = rng.integers(lo, hi, size=4)
                cells = [images[i] if f else None for i, f in zip(picks, filled)]
                mosaic(cells, size).save(root / split / f"{j:05d}.png", compress_level=1)
                present = sorted({CLASSES[labels[i]] for i, f in zip(picks, filled) if f})
                rows.append((f"{split}/{j:05d}.png", "|".join(present)))
            with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows([("path", "labels"), *rows])
        params = {**counts, "size": size, "seed": seed, "filled": FILLED, "source": str(FASHION),
                  "task": "multilabel"}
        (root / MARKER).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        check_out(out, overwrite)  # again: the folder may have changed while we were building

    atomic_write_dir(out, write)  # readers see the old set or the complete new one
    return {**counts, "size": size, "seed": seed, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default, help in (("train", 4000, "training images"), ("val", 1000, "validation images"),
                                ("test", 2000, "test images"), ("size", 64, "image side in pixels"),
                                ("seed", 0, "seeds the garments and cells")):
        parser.add_argument(f"--{name}", type=int, default=default, help=help)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--overwrite", action="store_true", help="replace a set this script wrote earlier")
    args = parser.parse_args(argv)
    try:
        s = build(args.out, args.train, args.val, args.test, args.size, args.seed, args.overwrite)
    except Refused as e:  # a one-line reason, exit 2
        return print(f"error: {e}", file=sys.stderr) or 2
    print(f"train {s['train']}, val {s['val']}, test {s['test']} 2x2 garment mosaics at {s['size']} px -> {s['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
