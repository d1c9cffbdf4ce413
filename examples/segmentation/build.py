"""Build a real-data semantic-segmentation set: Fashion-MNIST garments pasted onto noisy canvases, with class masks.

No package in the registries we may use ships a segmentation data set, so this composites one from the Debian
`dataset-fashion-mnist` package: 1-4 tinted garments per canvas, later ones occluding earlier ones, and a mask PNG of
class indices (0 = background, 1-10 = Fashion-MNIST label + 1). Seeded, so every run and benchmark sees the same pixels.

    python examples/segmentation/build.py        # 3000/300/500 images at 128 px into examples/segmentation/data
    python examples/segmentation/build.py --train 50 --val 10 --test 10 --out /tmp/seg
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sft.core.atomic import atomic_write_dir

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MARKER = ".sft-composites"
# split -> (Fashion-MNIST file prefix, first index, end index): val digits are disjoint from train digits.
SOURCES = {"train": ("train", 0, 50_000), "val": ("train", 50_000, 60_000), "test": ("t10k", 0, 10_000)}
SIDE = (24, 64)      # object side in pixels, inclusive (on the default 128 px canvas: the geometry)
THRESHOLD = 20       # an object's pixels brighter than this (after resizing) are the object
BACKGROUND = (10, 70)  # per-image grey level of the background
NOISE = 6.0          # std of the Gaussian noise over the whole canvas, so pasted objects are not noise-free


class Refused(Exception):
    """A refusal with a one-line reason: main() prints it and exits 2, tests catch it."""


def read_fashion(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of one Fashion-MNIST IDX file pair."""
    with gzip.open(FASHION / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def composite(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, lo: int, hi: int, size: int,
              side_range: tuple[int, int] = SIDE):
    """One canvas: an RGB uint8 image, its uint8 mask of class indices, and the number of objects pasted."""
    canvas = np.full((size, size, 3), rng.uniform(*BACKGROUND), np.float32)
    mask = np.zeros((size, size), np.uint8)
    n = int(rng.integers(1, 5))
    for _ in range(n):
        i = int(rng.integers(lo, hi))
        side = int(rng.integers(side_range[0], side_range[1] + 1))
        grey = np.asarray(Image.fromarray(images[i]).resize((side, side), Image.BILINEAR), np.float32)
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
        y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
        on = grey > THRESHOLD  # only the garment's own pixels: its dark surroundings do not erase what is under it
        canvas[y:y + side, x:x + side][on] = grey[on][:, None] * tint
        mask[y:y + side, x:x + side][on] = labels[i] + 1
    canvas += rng.standard_normal(canvas.shape, np.float32) * NOISE
    return np.clip(canvas, 0, 255).round().astype(np.uint8), mask, n


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to touch a non-empty folder unless --overwrite, and never one this script did not write."""
    if out.exists() and not out.is_dir():
        raise Refused(f"{out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / MARKER).is_file():
        raise Refused(f"{out} is not empty and was not written by this script (no {MARKER}); not replacing it")
    if not overwrite:
        raise Refused(f"{out} already holds a composite set; pass --overwrite to replace it")


def check_request(out: Path, counts: dict, size: int, largest_side: int, overwrite: bool) -> None:
    """The refusals before building (this builder's and the detection one's): negative split sizes, a canvas
    smaller than the largest object, Fashion-MNIST missing, an output folder that may not be replaced."""
    if min(counts.values()) < 0:
        raise Refused("split sizes must not be negative")
    if size < largest_side:
        raise Refused(f"--size must be at least {largest_side} (the largest object side)")
    if not all((FASHION / f"{p}-{kind}-ubyte.gz").is_file() for p in ("train", "t10k")
               for kind in ("images-idx3", "labels-idx1")):
        raise Refused(f"Fashion-MNIST not found in {FASHION}: apt-get install dataset-fashion-mnist")
    check_out(out, overwrite)


def build(out: Path, train: int, val: int, test: int, size: int = 128, seed: int = 0,
          overwrite: bool = False, side: tuple[int, int] = SIDE) -> dict:
    """Write out/<split>/{images,masks}/<id>.png, out/classes.txt and the marker; return the summary. `side`: the
    range of object sides in pixels (Fashion-MNIST items are 28 px originals: far larger sides add no detail)."""
    out = Path(out)
    counts = {"train": train, "val": val, "test": test}
    if not 1 <= side[0] <= side[1]:
        raise Refused(f"object sides {side[0]}-{side[1]}: expected 1 <= low <= high")
    check_request(out, counts, size, side[1], overwrite)
    stats = {"objects": 0, "background": 0, "pixels": 0}

    def write(tmp: str) -> None:
        root, sources = Path(tmp), {}
        for k, (split, n_images) in enumerate(counts.items()):
            prefix, lo, hi = SOURCES[split]
            if prefix not in sources:
                sources[prefix] = read_fashion(prefix)
            images, labels = sources[prefix]
            rng = np.random.default_rng([seed, k])  # per split: changing --train leaves val and test as they were
            for sub in ("images", "masks"):
                (root / split / sub).mkdir(parents=True)
            for j in range(n_images):
                image, mask, n = composite(rng, images, labels, lo, hi, size, side)
                Image.fromarray(image, "RGB").save(root / split / "images" / f"{j:05d}.png", compress_level=1)
                Image.fromarray(mask, "L").save(root / split / "masks" / f"{j:05d}.png")
                stats["objects"] += n
                stats["background"] += int((mask == 0).sum())
                stats["pixels"] += mask.size
        (root / "classes.txt").write_text("\n".join(["background", *CLASSES]) + "\n", encoding="utf-8")
        params = {**counts, "size": size, "side": list(side), "seed": seed, "source": str(FASHION)}
        (root / MARKER).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        check_out(out, overwrite)  # again: the folder may have changed while we were building

    atomic_write_dir(out, write)  # readers see the old set or the complete new one, never a half-written one
    return {**counts, "size": size, "side": list(side), "seed": seed,
            "objects_per_image": stats["objects"] / max(sum(counts.values()), 1),
            "background_share": stats["background"] / max(stats["pixels"], 1), "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=128, help="canvas side in pixels (at least the largest side)")
    parser.add_argument("--side", type=int, nargs=2, default=list(SIDE), metavar=("LOW", "HIGH"),
                        help="object sides in pixels, inclusive")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--overwrite", action="store_true", help="replace a set this script wrote earlier")
    args = parser.parse_args(argv)
    try:
        s = build(args.out, args.train, args.val, args.test, args.size, args.seed, args.overwrite, tuple(args.side))
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"train {s['train']}, val {s['val']}, test {s['test']} images at {s['size']} px -> {s['out']}: "
          f"{s['objects_per_image']:.2f} objects per image, {s['background_share']:.1%} background pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
