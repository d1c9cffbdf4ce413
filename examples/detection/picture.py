"""The README's picture of detections: test composites of a finished run, each as truth (green) | prediction (red,
score >= the threshold, 0.3 unless given), tiled into one PNG.

    .venv/bin/python examples/detection/picture.py RUN OUT.png [count] [score]
    .venv/bin/python examples/detection/picture.py bench/out/detection-run-imagenet docs/detection.png 6 0.5
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sft.tasks import get_task, load_recipe
from sft.tasks.detection.data import box_transforms, load_image, read_detection, transform_image
from sft.tasks.detection.report import draw


def main(run: str, out: str, count: int = 6, score: float = 0.3) -> None:
    task = get_task("detection")
    info = task.run_info(Path(run))
    model = task.load_run(Path(run), info)
    test = load_recipe(Path(run) / "recipe.yaml").data.test
    samples = read_detection(test.path, test.format, info.classes)
    _, eval_tf = box_transforms(info.image_size, "none")
    tiles = []
    for i in range(count):
        image = load_image(samples.items[i])
        with torch.inference_mode():
            found = model(transform_image(eval_tf, image)[None])[0]
        keep = found["scores"] >= score
        scale = torch.tensor([image.shape[-1] / info.image_size, image.shape[-2] / info.image_size] * 2)
        names = [info.classes[int(c)] for c in samples.box_labels[i]]
        truth = draw(image, torch.from_numpy(samples.boxes[i]), names, "lime")
        shown = draw(image, found["boxes"][keep] * scale, [f"{info.classes[int(c)]} {float(s):.2f}" for c, s in
                                                           zip(found["labels"][keep], found["scores"][keep])], "red")
        tiles.append(np.concatenate([truth, np.full((truth.shape[0], 4, 3), 255, np.uint8), shown], 1))
    rows = [np.concatenate([t, np.full((t.shape[0], 12, 3), 255, np.uint8)], 1) for t in tiles]
    half = (len(rows) + 1) // 2
    grid = np.concatenate([np.concatenate(rows[:half], 1), np.concatenate(
        rows[half:] + [np.full_like(rows[0], 255)] * (half - len(rows[half:])), 1)], 0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(float(a) if "." in a else int(a) for a in sys.argv[3:5]))
