"""Build a real-data image-regression set: single Fashion-MNIST garments rotated by a uniform angle, the angle to
predict.

No package in the registries we may use ships an image-regression data set, so this makes one from the Debian
`dataset-fashion-mnist` package (the segmentation builder's reader and refusals are reused): each garment is enlarged
to the image size, rotated by an angle drawn uniformly from [-60°, 60°] (counter-clockwise positive, black corners)
and written as a PNG; a CSV manifest per split gives its path, the angle and the garment's class. Val digits come from
the official train split after the train ones, test from the official test split. Seeded, so every run and
benchmark sees the same pixels.

    <out>/<split>.csv                       path,angle,garment (paths relative to the manifest)
    <out>/<split>/00000.png                 the rotated garments

    python examples/regression/build.py        # 4000/1000/2000 images at 64 px into examples/regression/data
    python examples/regression/build.py --train 60 --val 20 --test 20 --out /tmp/angles
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

ANGLE = 60.0  # angles are drawn uniformly from [-ANGLE, ANGLE] degrees


def rotated(image: np.ndarray, angle: float, size: int) -> Image.Image:
    """A 28 px garment enlarged to `size` (bicubic) and rotated by `angle` degrees about its centre, as RGB."""
    big = Image.fromarray(image).resize((size, size), Image.BICUBIC)
    return big.rotate(angle, resample=Image.BICUBIC, fillcolor=0).convert("RGB")


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
            for j, i in enumerate(rng.choice(np.arange(lo, hi), size=counts[split], replace=False)):
                angle = round(float(rng.uniform(-ANGLE, ANGLE)), 3)
                rotated(images[i], angle, size).save(root / split / f"{j:05d}.png", compress_level=1)
                rows.append((f"{split}/{j:05d}.png", angle, CLASSES[labels[i]]))
            with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows([("path", "angle", "garment"), *rows])
        params = {**counts, "size": size, "seed": seed, "angle": ANGLE, "source": str(FASHION), "task": "regression"}
        (root / MARKER).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        check_out(out, overwrite)  # again: the folder may have changed while we were building

    atomic_write_dir(out, write)  # readers see the old set or the complete new one
    return {**counts, "size": size, "seed": seed, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default, help in (("train", 4000, "training images"), ("val", 1000, "validation images"),
                                ("test", 2000, "test images"), ("size", 64, "image side in pixels"),
                                ("seed", 0, "seeds the garments and angles")):
        parser.add_argument(f"--{name}", type=int, default=default, help=help)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--overwrite", action="store_true", help="replace a set this script wrote earlier")
    args = parser.parse_args(argv)
    try:
        s = build(args.out, args.train, args.val, args.test, args.size, args.seed, args.overwrite)
    except Refused as e:  # a one-line reason, exit 2
        return print(f"error: {e}", file=sys.stderr) or 2
    print(f"train {s['train']}, val {s['val']}, test {s['test']} garments at {s['size']} px, rotated by "
          f"-{ANGLE:g}..{ANGLE:g} degrees -> {s['out']}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
