"""Shipping a model out of sft: ONNX conversion with dynamic axes, onnxruntime sessions, the parity check of the
converted model against the PyTorch one on real samples, and the export folder (written whole, marked, never over
something else).

An ONNX export's model.json records the sha256 of its model.onnx (`onnx_id`), and the file is checked against it
before onnxruntime loads it: a model.onnx copied in from another export, or cut short, is refused rather than served.

The TorchScript-based exporter (`dynamo=False`) is used: it converts a small timm model many times faster than the
torch.export-based one on a CPU, and it handles dynamic batch and sequence axes. Whichever exporter is used, nothing
is trusted without the parity check (peft 670: a merged LoRA exported to ONNX can give degraded
outputs with nothing to catch it).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from sft.core.atomic import atomic_write_dir
from sft.core.digest import sha256_file
from sft.core.rundir import check_replaceable, mark
from sft.errors import UserError

log = logging.getLogger("sft")
OPSET = 17
TOLERANCE = 1e-4  # max absolute difference of probabilities that still passes (float32 kernels differ ~1e-6)
MIN_AGREEMENT = 0.99  # top-1 agreement that still passes (a flip needs two near-equal probabilities)


def to_onnx(module: nn.Module, example: tuple, path: str | Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> None:
    """Write `module` as ONNX: `dynamic` names the axes (batch, sequence) that stay free."""
    module.eval()  # the exporter restores the top module's mode: an eval()-ed submodule is not enough
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes: the parity check decides
        torch.onnx.export(module, example, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                          opset_version=OPSET, dynamo=False)
    module.eval()


def session(path: str | Path):
    """An onnxruntime CPU session on `path`, threads as torch uses them (the CPU may be shared)."""
    import onnxruntime as ort  # deferred: only export, predict --engine onnx and serve need it

    if not Path(path).is_file():
        raise UserError(f"{path}: no ONNX model; write it with `sft export RUN --format onnx`")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep: alternating
    # with torch's own threads (the parity check) or sharing the CPU, spinning ones slow everything down
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base class but Exception
        first = (str(e).strip() or type(e).__name__).splitlines()[0]
        detail = first.rsplit("failed:", 1)[-1].strip().rstrip(".")  # after "Load model from PATH failed:"
        raise UserError(f"{path}: not an ONNX model onnxruntime can load ({detail}); export again with "
                        f"`sft export RUN --format onnx --overwrite`") from None


class OnnxModule(nn.Module):
    """An onnxruntime session behind the PyTorch call the run's model has: a tensor (images) or a dict of tensors
    (tokenized texts) in, a float tensor of logits out. No parameters, so eval()/to() are no-ops that still work."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.session = session(path)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def forward(self, x: torch.Tensor | dict) -> torch.Tensor:
        if isinstance(x, dict):
            feed = {name: x[name].cpu().numpy().astype(np.int64) for name in self.inputs}
        else:
            feed = {self.inputs[0]: x.detach().float().contiguous().cpu().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / temperature) over the class axis (1: (B, C) and (B, C, H, W) alike)."""
    return (logits.float() / temperature).softmax(1)


@torch.inference_mode()
def parity(reference: nn.Module, exported: nn.Module, batches: Callable[[int], Iterable], sizes: tuple[int, ...],
           temperature: float = 1.0, tolerance: float = TOLERANCE, scale: torch.Tensor | None = None) -> dict:
    """Compare the exported model with the PyTorch one on the same real samples, at each batch size of `sizes`:
    the largest absolute difference of probabilities and the share of equal top-1 predictions (per pixel for dense
    outputs); or, given `scale` (a regression's targets' standard deviations, one per output column), the largest
    absolute difference of the outputs in those units. `batches(size)` yields input batches. `passed` says whether
    every size is within the tolerance."""
    reference.eval()
    values = scale is not None
    result: dict = {"tolerance": tolerance, "batch_sizes": {}}
    if values:
        result["units"] = "standard deviations of the targets"
    else:
        result["min_top1_agreement"] = MIN_AGREEMENT
    for size in sizes:
        worst, agree, total, samples = 0.0, 0, 0, 0
        for x in batches(size):
            if values:
                p, q = reference(x).float() / scale, exported(x).float().to(scale.device) / scale
            else:
                p, q = probabilities(reference(x), temperature), probabilities(exported(x), temperature)
            worst = max(worst, float((p - q).abs().max()))
            same = p.argmax(1) == q.argmax(1)
            agree, total, samples = agree + int(same.sum()), total + same.numel(), samples + p.shape[0]
        result["batch_sizes"][str(size)] = {"max_abs_diff": worst, "samples": samples}
        if not values:
            result["batch_sizes"][str(size)]["top1_agreement"] = agree / max(total, 1)
    rows = result["batch_sizes"].values()
    result["max_abs_diff"] = max(r["max_abs_diff"] for r in rows)
    result["passed"] = result["max_abs_diff"] <= tolerance
    if not values:
        result["top1_agreement"] = min(r["top1_agreement"] for r in rows)
        result["passed"] = result["passed"] and result["top1_agreement"] >= MIN_AGREEMENT
    return result


def parity_failure(result: dict) -> str:
    """How far a failed parity check missed, for the user."""
    over = f"(tolerance {result['tolerance']:.3g}, {result['max_abs_diff'] / result['tolerance']:.1f}× over)"
    if "units" in result:
        return f"the exported model differs from the PyTorch model: max |Δoutput| {result['max_abs_diff']:.3g} " \
               f"{result['units']} {over}"
    return (f"the exported model differs from the PyTorch model: max |Δprobability| {result['max_abs_diff']:.3g} "
            f"{over}, top-1 agreement {result['top1_agreement']:.4f} (needed {result['min_top1_agreement']})")


def record_parity(folder: Path, result: dict, force: bool) -> None:
    """parity.json in the export folder; a failed check stops the export (nothing is written) unless `force`."""
    (folder / "parity.json").write_text(json.dumps(result, indent=2) + "\n")
    if not result["passed"] and not force:
        raise UserError(f"{parity_failure(result)}; nothing written (pass --force to write it anyway)")


def check_export_dir(out: str | Path, run: str | Path, overwrite: bool) -> None:
    """An export goes to a new or empty folder, or replaces an earlier export with `overwrite`; never the run
    directory itself or a folder sft did not write."""
    out, run = Path(out), Path(run)
    if out.resolve() == run.resolve() or out.resolve() in run.resolve().parents:
        raise UserError(f"--out {out}: would replace the run directory itself; choose a folder for the export")
    check_replaceable(out, "export", overwrite=overwrite, keep=(run,),
                      hint="pass --overwrite to replace it")


def write_export_dir(out: str | Path, write: Callable[[Path], None], **facts) -> None:
    """Write the export folder whole (a temporary folder swapped into place), marked as an export."""
    def fill(tmp: str) -> None:
        write(Path(tmp))
        mark(Path(tmp), "export", **facts)
        for file in Path(tmp).rglob("*"):  # some writers (safetensors) make private files; these are to be shipped
            if file.is_file():
                file.chmod(0o644)
    atomic_write_dir(out, fill)


def file_id(path: str | Path) -> str:
    """sha256 of the run's weights file: ties an export (and a server's /metadata) to the exact weights."""
    return "sha256:" + sha256_file(path)


def default_folder(run_dir: str | Path, format: str = "onnx") -> Path:
    """Where `sft export RUN` writes unless --out: RUN/export (ONNX, which predict/serve --engine onnx read) or
    RUN/export-FORMAT."""
    return Path(run_dir) / ("export" if format == "onnx" else f"export-{format}")


def parity_parts(load_splits: Callable[[], object], limit: int, what: str, warn_below: int) -> list:
    """Up to `limit` real samples for the parity check: the run's validation split, then its test split (subsets of
    `load_splits()`'s val and test), with a warning when fewer than `warn_below` exist."""
    try:
        splits = load_splits()
    except UserError as e:
        raise UserError(f"the parity check reads the run's own validation/test {what}, which cannot be read now: "
                        f"{e}") from None
    parts, left = [], limit
    for split in (splits.val, splits.test):
        if split is not None and left > 0:
            parts.append(split.subset(range(min(left, len(split)))))
            left -= len(parts[-1])
    total = sum(len(p) for p in parts)
    if total < warn_below:
        log.warning(f"parity check on {total} {what} only: the run's validation and test splits hold no more")
    return parts


def input_batches(parts: list, loader: Callable[[object, int], Iterable]) -> Callable[[int], Iterator]:
    """`batches(size)` for `parity`: the inputs of the (input, target) batches `loader(part, size)` gives, part after
    part."""
    def batches(size: int) -> Iterator:
        for part in parts:
            yield from (x for x, _ in loader(part, size))
    return batches


def export_checked(out: Path, save: Callable[[Path], nn.Module], *, reference: nn.Module,
                   batches: Callable[[int], Iterable], sizes: tuple[int, ...], temperature: float, force: bool,
                   facts: dict, format: str, task: str | None, scale: torch.Tensor | None = None) -> dict:
    """An export folder whose model is checked: `save(folder)` writes the model's files and returns the model loaded
    back from them (as a user of the folder loads it), which is compared with `reference` on `batches` (`parity`'s
    `temperature` or `scale`); parity.json holds the result and `facts`. A failed check writes nothing unless
    `force`. Returns the parity result."""
    result: dict = {}

    def write(folder: Path) -> None:
        result.update(parity(reference, save(folder), batches, sizes, temperature, scale=scale), **facts)
        record_parity(folder, result, force)

    write_export_dir(out, write, format=format, task=task)
    return result


def export_onnx_checked(out: Path, *, graph: nn.Module, example: tuple, inputs: list[str],
                        dynamic: dict[str, dict[int, str]], reference: nn.Module, batches: Callable[[int], Iterable],
                        sizes: tuple[int, ...], temperature: float, force: bool, meta: dict, facts: dict,
                        extra: Callable[[Path], None] | None = None, scale: torch.Tensor | None = None,
                        output: str = "logits",
                        meaning: dict | None = None) -> dict:
    """The ONNX export folder of a task: `graph` converted (its one output named `output`), checked against
    `reference` on `batches` (`parity`'s `temperature` or `scale`), parity.json (with `facts`), model.json (`meta` +
    the graph's names and axes + `meaning`, what the output means: by default the probabilities of its logits),
    `extra(folder)` for the task's own files. A failed check writes nothing unless `force`. Returns the parity
    result."""
    dynamic = {**dynamic, output: {0: "batch"}}
    meaning = {"probabilities": "softmax(logits / temperature) over axis 1"} if meaning is None else meaning

    def save(folder: Path) -> nn.Module:
        to_onnx(graph, example, folder / "model.onnx", inputs, [output], dynamic)
        axes = {name: {str(a): n for a, n in v.items()} for name, v in dynamic.items()}
        (folder / "model.json").write_text(json.dumps(meta | {"format": "onnx", "inputs": inputs, "outputs": [
            output], "dynamic_axes": axes, **meaning, "onnx_id": file_id(folder / "model.onnx")}, indent=2) + "\n")
        if extra is not None:
            extra(folder)
        return OnnxModule(folder / "model.onnx")

    return export_checked(out, save, reference=reference, batches=batches, sizes=sizes, temperature=temperature,
                          force=force, facts=facts, format="onnx", task=meta.get("task"), scale=scale)


def check_export(folder: Path, weights: Path, run_dir) -> dict:
    """An ONNX export's model.json, refused when its model.onnx is not the file the export wrote (swapped in from
    another export, cut short) or the run's weights changed since (retrained)."""
    again = f"export again with `sft export {run_dir} --format onnx --overwrite`"
    model = folder / "model.onnx"
    if not model.is_file():
        raise UserError(f"{run_dir}: no ONNX export ({model}); write it with `sft export {run_dir} --format onnx`")
    try:
        meta = json.loads((folder / "model.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:  # missing, unreadable, or not JSON (json's errors are ValueErrors)
        raise UserError(f"{folder / 'model.json'}: missing or damaged ({e}); {again}") from None
    if "onnx_id" not in meta:
        raise UserError(f"{folder / 'model.json'}: records no sha256 of model.onnx, so the file cannot be checked; "
                        f"{again}")
    if meta["onnx_id"] != file_id(model):  # file_id is cached: serving asks again
        raise UserError(f"{model}: not the file this export wrote (its sha256 differs from the one in model.json: "
                        f"copied from another export, or damaged); {again}")
    if weights.is_file() and meta.get("weights_id") != file_id(weights):
        raise UserError(f"{folder}: exported from other weights than the run's model.safetensors (retrained?); "
                        f"{again}")
    return meta
