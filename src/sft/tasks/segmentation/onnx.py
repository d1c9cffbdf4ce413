"""`sft export RUN --format onnx` for segmentation, and the export back for `sft predict --engine onnx`.

    RUN/export/            (or --out)
      model.onnx           input (B, 3, S, S) float, the run's eval transform applied; output logits (B, classes, S, S);
                           B is a dynamic axis (S is the run's image size: the decoders' skips fix it)
      model.json           the run's model.json (classes, image size, mean/std, palette) + the graph's names and axes,
                           the weights' id and model.onnx's sha256 (both checked before the file is loaded)
      parity.json          onnxruntime against PyTorch per pixel (probabilities and top-1 class), batch 1 and N, on the
                           run's own validation and test images
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from sft.core.rundir import RunDir
from sft.data.loaders import eval_batches
from sft.models.export import (OnnxModule, check_export, check_export_dir, default_folder, export_onnx_checked,
                               file_id, input_batches, parity_parts)
from sft.tasks import load_recipe
from sft.tasks.segmentation.data import eval_dataset

PARITY_IMAGES = 64
PARITY_BATCH = 8


def load_onnx(run_dir: str | Path) -> OnnxModule:
    """The run's ONNX export through onnxruntime; refused when its model.onnx is not the file the export
    wrote or the run's weights changed since."""
    folder = default_folder(run_dir)
    check_export(folder, Path(run_dir) / "model.safetensors", run_dir)
    return OnnxModule(folder / "model.onnx")


def export_onnx(task, run_dir: str | Path, out: str | Path | None, *, force: bool,
                overwrite: bool) -> tuple[Path, dict]:
    """Convert the run's model (`task`'s run_info and load_run), check it per pixel against the PyTorch model on up to
    PARITY_IMAGES images of the run's validation, then test split, and write the export folder."""
    run = RunDir(run_dir)
    out = Path(out) if out else default_folder(run.path)
    check_export_dir(out, run.path, overwrite)  # before loading the model: a refused rerun costs nothing
    info = task.run_info(run.path)
    model = task.load_run(run.path, info)
    parts = [eval_dataset(info, part) for part in
             parity_parts(lambda: task.load_splits(load_recipe(run.recipe)), PARITY_IMAGES, "images", PARITY_IMAGES)]
    images = sum(len(p) for p in parts)
    batches = input_batches(parts, lambda part, size: eval_batches(part, size, None, False, ""))
    example = next(batches(2))
    meta = asdict(info) | {"weights_id": file_id(run.path / "model.safetensors"), "run_dir": str(run.path.resolve())}
    result = export_onnx_checked(out, graph=model, example=(example,), inputs=["input"],
                                 dynamic={"input": {0: "batch"}}, reference=model, batches=batches,
                                 sizes=(1, PARITY_BATCH), temperature=1.0, force=force, meta=meta,
                                 facts={"samples": images, "pixels_per_image": int(example[0, 0].numel())})
    return out, result
