"""Build a real-data object-detection set: Fashion-MNIST garments pasted onto noisy canvases, with exact boxes.

No package in the registries we may use ships a detection data set, so this composites one from the Debian
`dataset-fashion-mnist` package (the segmentation builder's reader and refusals are reused): 1-6 tinted garments per
canvas (about one canvas in ten is empty, a negative), 20-72 px each, later ones occluding earlier ones. Each box is
the tight box of the object's pixels that stay visible; an object left with less than a quarter of its pixels (or
under 30) is dropped, as an annotator would not label it. Seeded, so every run and benchmark sees the same pixels.
Both formats are written beside the same images:

    <out>/<split>/images/00000.png          the canvases
    <out>/<split>/annotations.json          COCO: bbox [x, y, w, h] in pixels, category ids 1..10
    <out>/<split>/labels/00000.txt          YOLO: `class cx cy w h` normalised, classes 0..9 (empty file: negative)
    <out>/classes.txt, <out>/data.yaml      the class names (YOLO)

    python examples/detection/build.py        # 2000/300/500 images at 160 px into examples/detection/data
    python examples/detection/build.py --train 50 --val 10 --test 10 --size 96 --out /tmp/det
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sft.core.atomic import atomic_write_dir

_spec = importlib.util.spec_from_file_location("segmentation_build", Path(__file__).parents[1] / "segmentation" /
                                               "build.py")
_seg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_seg)  # examples/ is not a package: the shared reader and refusals, loaded by path
CLASSES, FASHION, MARKER, SOURCES, Refused = _seg.CLASSES, _seg.FASHION, _seg.MARKER, _seg.SOURCES, _seg.Refused
read_fashion, check_out = _seg.read_fashion, _seg.check_out

SIDE = (20, 72)        # object side in pixels, inclusive
OBJECTS = (1, 6)       # objects on a non-empty canvas, inclusive
EMPTY = 0.1            # share of canvases with no object
MIN_VISIBLE = 0.25     # an object keeps its box when at least this share of its pixels stays visible ...
MIN_PIXELS = 30        # ... and at least this many


def composite(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, lo: int, hi: int, size: int):
    """One canvas: an RGB uint8 image and its boxes [(x0, y0, x1, y1, class)] in pixels (x1, y1 exclusive)."""
    canvas = np.full((size, size, 3), rng.uniform(*_seg.BACKGROUND), np.float32)
    owner = np.full((size, size), -1, np.int16)  # which object each pixel shows, for the visible boxes
    n = 0 if rng.random() < EMPTY else int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))
    pasted = []
    for k in range(n):
        i = int(rng.integers(lo, hi))
        side = int(rng.integers(SIDE[0], SIDE[1] + 1))
        grey = np.asarray(Image.fromarray(images[i]).resize((side, side), Image.BILINEAR), np.float32)
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
        y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
        on = grey > _seg.THRESHOLD  # the garment's own pixels: its dark surroundings do not hide what is under it
        canvas[y:y + side, x:x + side][on] = grey[on][:, None] * tint
        owner[y:y + side, x:x + side][on] = k
        pasted.append((int(labels[i]), int(on.sum())))
    canvas += rng.standard_normal(canvas.shape, np.float32) * _seg.NOISE
    boxes = []
    for k, (label, pixels) in enumerate(pasted):
        ys, xs = np.nonzero(owner == k)
        if len(ys) >= max(MIN_PIXELS, MIN_VISIBLE * pixels):
            boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, label))
    return np.clip(canvas, 0, 255).round().astype(np.uint8), boxes


def build(out: Path, train: int, val: int, test: int, size: int = 160, seed: int = 0,
          overwrite: bool = False) -> dict:
    """Write the set (layout in the module docstring) and the marker; return the summary."""
    out = Path(out)
    counts = {"train": train, "val": val, "test": test}
    _seg.check_request(out, counts, size, SIDE[1], overwrite)
    stats = {"boxes": 0, "empty": 0, "sides": []}

    def write(tmp: str) -> None:
        root, sources = Path(tmp), {}
        for k, (split, n_images) in enumerate(counts.items()):
            prefix, lo, hi = SOURCES[split]
            if prefix not in sources:
                sources[prefix] = read_fashion(prefix)
            rng = np.random.default_rng([seed, k])  # per split: changing --train leaves val and test as they were
            for sub in ("images", "labels"):
                (root / split / sub).mkdir(parents=True)
            coco = {"images": [], "annotations": [],
                    "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]}
            for j in range(n_images):
                image, boxes = composite(rng, *sources[prefix], lo, hi, size)
                name = f"{j:05d}"
                Image.fromarray(image, "RGB").save(root / split / "images" / f"{name}.png", compress_level=1)
                coco["images"].append({"id": j + 1, "file_name": f"images/{name}.png", "width": size,
                                       "height": size})
                lines = []
                for x0, y0, x1, y1, label in boxes:
                    w, h = x1 - x0, y1 - y0
                    coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": j + 1,
                                                "category_id": label + 1, "bbox": [x0, y0, w, h], "area": w * h,
                                                "iscrowd": 0})
                    lines.append(f"{label} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
                                 f"{w / size:.6f} {h / size:.6f}")
                    stats["sides"].append((w * h) ** 0.5)
                (root / split / "labels" / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
                stats["boxes"] += len(boxes)
                stats["empty"] += not boxes
            (root / split / "annotations.json").write_text(json.dumps(coco) + "\n")
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
        names = "".join(f"  {i}: {json.dumps(name)}\n" for i, name in enumerate(CLASSES))
        (root / "data.yaml").write_text(f"path: .\ntrain: train/images\nval: val/images\ntest: test/images\n"
                                        f"names:\n{names}", encoding="utf-8")
        params = {**counts, "size": size, "seed": seed, "source": str(FASHION), "task": "detection"}
        (root / MARKER).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        check_out(out, overwrite)  # again: the folder may have changed while we were building

    atomic_write_dir(out, write)  # readers see the old set or the complete new one
    total = sum(counts.values())
    sides = np.asarray(stats["sides"] or [0.0])
    return {**counts, "size": size, "seed": seed, "boxes_per_image": stats["boxes"] / max(total, 1),
            "empty_images": stats["empty"], "box_side_p5_p50_p95": [round(float(np.percentile(sides, q)), 1)
                                                                     for q in (5, 50, 95)], "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=160, help=f"canvas side in pixels (at least {SIDE[1]})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--overwrite", action="store_true", help="replace a set this script wrote earlier")
    args = parser.parse_args(argv)
    try:
        s = build(args.out, args.train, args.val, args.test, args.size, args.seed, args.overwrite)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"train {s['train']}, val {s['val']}, test {s['test']} images at {s['size']} px -> {s['out']}: "
          f"{s['boxes_per_image']:.2f} boxes per image, {s['empty_images']} empty images, box side (sqrt area) "
          f"p5/p50/p95 {s['box_side_p5_p50_p95']} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
