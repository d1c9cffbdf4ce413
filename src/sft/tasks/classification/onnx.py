"""`sft export RUN --format onnx` for image and text classification, and the exported model back as a callable for
`sft predict --engine onnx` and `sft serve --engine onnx`.

    RUN/export/            (or --out)
      .sft-run             {"kind": "export", "format": "onnx", ...}
      model.onnx           images: input (B, 3, H, W) float; texts: the tokenizer's tensors (B, T) int64;
                           output logits (B, classes); B (and T) are dynamic axes
      model.json           the run's model.json (classes, preprocessing, temperature) + the graph's names and axes,
                           the eval transform, the id of the weights it was exported from and the sha256 of
                           model.onnx (onnx_id: checked before the file is loaded)
      parity.json          onnxruntime against PyTorch on the run's own validation/test samples, batch 1 and N
      tokenizer files      texts: what turns a text into the model's inputs

A LoRA run is merged into the encoder before conversion, and the parity check compares the converted model with the
*unmerged* run model, so a bad merge cannot slip through.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.data import DataLoader

from sft.core.rundir import RunDir
from sft.data.samples import Samples
from sft.models.export import (OnnxModule, check_export, check_export_dir, default_folder, export_onnx_checked,
                               file_id, input_batches, parity_parts)
from sft.tasks import load_recipe
from sft.tasks.classification.export import ModelInfo, eval_transform, model_files

PARITY_SAMPLES = 128  # from the run's validation split, then its test split
MIN_SAMPLES = 64
PARITY_BATCH = 32  # "batch N" of the parity check


class OnnxClassifier(OnnxModule):
    """An exported image classifier, called as the run's TrainedClassifier is. `graph` is how a run's model becomes
    the graph: its inputs, their dynamic axes, what the export folder keeps beside it."""

    def __init__(self, folder: Path):
        super().__init__(folder / "model.onnx")

    @staticmethod
    def graph(model: nn.Module, info: ModelInfo, example) -> dict:
        return {"graph": model, "inputs": ["input"], "example": (example,), "dynamic": {"input": {0: "batch"}},
                "meta": {"transform": str(eval_transform(info))}, "extra": None}


class _Positional(nn.Module):
    """The text model with positional tensor inputs, as the ONNX graph takes them."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors)))


class OnnxTextClassifier(OnnxClassifier):
    """An exported text classifier with the export's own tokenizer (`run_inputs` reads it from `backbone.tokenizer`,
    as from a TextEncoder). Its graph takes the tokenizer's tensors, batch and sequence axes free; a LoRA run's
    adapters are merged into a copy's encoder (the parity check compares with the unmerged model)."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        from transformers import AutoTokenizer  # deferred: image runs never need transformers here
        self.backbone = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(str(folder)))

    @staticmethod
    def graph(model: nn.Module, info: ModelInfo, example) -> dict:
        names, exported = list(example), model
        if info.lora:
            exported = copy.deepcopy(model)
            exported.backbone.model = exported.backbone.model.merge_and_unload()
        return {"graph": _Positional(exported, names), "inputs": names, "example": tuple(example[n] for n in names),
                "dynamic": {n: {0: "batch", 1: "sequence"} for n in names}, "meta": {},
                "extra": model.backbone.tokenizer.save_pretrained}


def load_onnx(run_dir: str | Path, kind: type[OnnxClassifier]) -> OnnxClassifier:
    """The run's ONNX export (RUN/export) as `kind`; refused when its model.onnx is not the file the export wrote
    or the run's weights changed since."""
    folder = default_folder(run_dir, "onnx")
    check_export(folder, model_files(RunDir(run_dir))[0], run_dir)
    return kind(folder)


def parity_samples(task, run: RunDir) -> list[Samples]:
    """Up to PARITY_SAMPLES real samples of the run's own validation split, then its test split."""
    return parity_parts(lambda: task.load_splits(load_recipe(run.recipe)), PARITY_SAMPLES, "samples", MIN_SAMPLES)


def sample_batches(inputs, parts: list[Samples]):
    """`batches(size)` for the parity check: the parts through the run's eval inputs (transform or tokenizer)."""
    return input_batches(parts, lambda part, size: DataLoader(inputs.eval(part), batch_size=size,
                                                              collate_fn=inputs.collate))


def export_onnx(task, run_dir: str | Path, out: str | Path | None, *, force: bool,
                overwrite: bool) -> tuple[Path, dict]:
    """Convert the run's model (the graph `task.onnx` makes of it), check it against the PyTorch model and write the
    export folder (see the module docstring). A failed check writes nothing unless `force`. Returns the folder and
    the parity result."""
    run = RunDir(run_dir)
    out = Path(out) if out else default_folder(run.path, "onnx")
    check_export_dir(out, run.path, overwrite)  # before loading the model: a refused rerun costs nothing
    model, info = task.load_trained(run.path)
    parts = parity_samples(task, run)
    batches = sample_batches(task.run_inputs(model, info), parts)
    g = task.onnx.graph(model, info, next(batches(2)))
    meta = g["meta"] | asdict(info) | {"weights_id": file_id(model_files(run)[0]), "run_dir": str(run.path.resolve())}
    result = export_onnx_checked(out, graph=g["graph"], example=g["example"], inputs=g["inputs"],
                                 dynamic=g["dynamic"], reference=model, batches=batches, sizes=(1, PARITY_BATCH),
                                 temperature=info.temperature, force=force, meta=meta,
                                 facts={"samples": sum(len(p) for p in parts), "lora_merged": bool(info.lora)},
                                 extra=g["extra"])
    return out, result
