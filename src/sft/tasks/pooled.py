"""What the tasks that put a new head on a backbone's pooled vector share — classification and regression, of images
and of texts: the head and the forward pass (on inputs, tokenized texts or cached features), each input kind's
backbone, inputs and files (`PooledImages`, `PooledTexts`: hooks a task class takes on), and a finished run's model
files, which rebuild the model without the training data or the original weights:

    model.safetensors      the best weights, backbone + head
    model.json             how to rebuild and feed the model: backbone name, preprocessing, the task's own record
    backbone/              texts: the encoder's config and tokenizer files (the run needs no model folder)
    adapter/               lora: the peft adapter alone (adapter_config.json, adapter_model.safetensors)

Images and texts differ only in how a backbone is built and fed and which files rebuild it; the two classes below are
those differences, so a task on pooled vectors writes its head, loss, scores and predictions once for both.
`PooledTask` holds the steps of a finished run that are the same for all of them (model.json as the task's record,
the model on PyTorch or its ONNX export, the same-data check, the server's predictor).

`sft export RUN --format onnx` converts such a run (`export_onnx`), and `load_onnx` gives the export back as a
callable for `sft predict --engine onnx` and `sft serve --engine onnx`:

    RUN/export/            (or --out)
      .sft-run             {"kind": "export", "format": "onnx", ...}
      model.onnx           images: input (B, 3, H, W) float; texts: the tokenizer's tensors (B, T) int64;
                           one output (B, outputs); B (and T) are dynamic axes
      model.json           the run's model.json + the graph's names and axes, what its output means, the eval
                           transform, the id of the weights it was exported from and the sha256 of model.onnx
                           (onnx_id: checked before the file is loaded)
      parity.json          onnxruntime against PyTorch on the run's own validation/test samples, batch 1 and N
      tokenizer files      texts: what turns a text into the model's inputs

A LoRA run is merged into the encoder before conversion, and the parity check compares the converted model with the
*unmerged* run model, so a bad merge cannot slip through.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sft.core.atomic import atomic_write_dir, atomic_write_text
from sft.core.rundir import RunDir
from sft.data.images import ImageDataset, build_transforms
from sft.data.loaders import Inputs
from sft.data.samples import Samples
from sft.data.splits import Splits
from sft.data.texts import TextDataset, Tokenize, text_item, token_lengths
from sft.errors import UserError
from sft.models.backbone import Backbone, Preprocess
from sft.models.export import (OnnxModule, check_export, check_export_dir, default_folder, export_onnx_checked,
                               file_id, input_batches, parity_parts)
from sft.models.lora import add_lora
from sft.models.text_encoder import TextPreprocess, create_text_backbone, create_text_encoder
from sft.models.vision import create_backbone
from sft.recipe import Lora, Recipe, Source
from sft.tasks import load_recipe
from sft.tasks.base import (TaskBase, data_identity, load_model_files, read_run_info, score_batches, source_of,
                            with_preprocess)
from sft.training.prepare import Prepared


def new_head(num_features: int, outputs: int, dropout: float) -> nn.Sequential:
    """The new final layer: the same shape in training and when a run's model is rebuilt."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, outputs))


def pooled_outputs(backbone: nn.Module, head: nn.Module, x: torch.Tensor | dict, channels_last: bool) -> torch.Tensor:
    """The head's outputs from images (B,3,H,W), tokenized texts (a dict) or cached features (B,D)."""
    if isinstance(x, dict):
        x = backbone(x)
    elif x.ndim == 4:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = backbone(x)
    return head(x)


def model_files(run: RunDir) -> tuple[Path, Path, Path, Path]:
    """(weights, info, encoder files, adapter) of a run."""
    return (run.path / "model.safetensors", run.path / "model.json", run.path / "backbone", run.path / "adapter")


def used_preprocess(pre, image_size: int | None):
    """The preprocessing a run trained with: the backbone's own, at data.image_size when set."""
    if isinstance(pre, Preprocess) and image_size:
        return replace(pre, input_size=(image_size, image_size))
    return pre


def eval_transform(info):
    """An image run's evaluation transform, from what the run stored (`sft eval`, `predict`, `serve`, the export)."""
    return build_transforms(info.preprocess, None, "none")[1]


def write_encoder(run: RunDir, model: nn.Module, info) -> None:
    """A text run's encoder config and tokenizer (backbone/), and a LoRA run's adapter (adapter/)."""
    _, _, encoder_files, adapter = model_files(run)
    encoder = model.backbone
    atomic_write_dir(encoder_files, lambda tmp: (encoder.model.config.save_pretrained(tmp),
                                                 encoder.tokenizer.save_pretrained(tmp)))
    if info.lora:
        atomic_write_dir(adapter, encoder.model.save_pretrained)


def read_encoder(run_dir: Path, info) -> nn.Module:
    """A text run's encoder, from its backbone/ files (with its LoRA adapters), weights not loaded."""
    encoder = create_text_encoder(str(model_files(RunDir(run_dir))[2]), "none", info.preprocess.pooling)[0]
    if info.lora:
        settings = {k: v for k, v in info.lora.items() if k in Lora.model_fields}  # the run's strategy section
        encoder.model = add_lora(encoder.model, Lora(**settings))
    return encoder


def read_vision_backbone(run_dir: Path, info) -> nn.Module:
    """An image run's backbone, built by name, weights not loaded."""
    return create_backbone(info.backbone, weights=None).module


class PooledImages:
    """The image half of a task on pooled vectors: a timm/torchvision backbone, its own transforms, image files."""
    column = "file"  # what `sft predict` rows call an input
    inputs = "files"
    preprocess = Preprocess  # model.json's preprocessing

    def build_backbone(self, recipe: Recipe) -> Backbone:
        return create_backbone(recipe.model.backbone, recipe.model.weights)

    def build_inputs(self, backbone: Backbone, recipe: Recipe | None) -> Inputs:
        """Datasets and collate in the backbone's transforms; recipe=None: evaluation inputs (no augmentation)."""
        size, augment = (recipe.data.image_size, recipe.data.augment) if recipe is not None else (None, "none")
        train_tf, eval_tf = build_transforms(backbone.preprocess, size, augment)
        return Inputs(lambda s: ImageDataset(s, train_tf), lambda s: ImageDataset(s, eval_tf), None, key=str(eval_tf))

    def trained_preprocess(self, p: Prepared):
        """The preprocessing the run trained with: the backbone's own, at data.image_size when set."""
        return used_preprocess(p.backbone.preprocess, p.recipe.data.image_size)

    def run_inputs(self, model, info) -> Inputs:
        """A finished run's evaluation inputs, from what the run stored: its eval transform."""
        eval_tf = eval_transform(info)
        return Inputs(lambda s: ImageDataset(s, eval_tf), lambda s: ImageDataset(s, eval_tf), None, key=str(eval_tf))

    def input_items(self, info, inputs: list[str]) -> list:
        """`sft predict`'s inputs as sample items: image files as they are."""
        return list(inputs)

    def write_backbone(self, run: RunDir, model, info) -> None:
        """The files beside model.safetensors that rebuild the backbone: none, its name in model.json does."""

    def read_backbone(self, run_dir: Path, info):
        """The run's backbone module, built from its files, its weights not loaded yet."""
        return read_vision_backbone(run_dir, info)


class PooledTexts:
    """The text half: a pooled Hugging Face encoder (LoRA-wrapped for a lora strategy), its tokenizer, texts or text
    pairs, the encoder's files in the run."""
    column = "text"
    inputs = "texts"
    preprocess = TextPreprocess

    def build_backbone(self, recipe: Recipe) -> Backbone:
        m = recipe.model
        return create_text_backbone(m.backbone, m.weights, m.pooling, recipe.data.max_length,
                                    pair=recipe.data.text_pair_column is not None,
                                    lora=recipe.strategy if recipe.strategy.name == "lora" else None)

    def build_inputs(self, backbone: Backbone, recipe: Recipe | None) -> Inputs:
        pre, tokenizer = backbone.preprocess, backbone.module.tokenizer
        return Inputs(TextDataset, TextDataset, Tokenize(tokenizer, pre.max_length),
                      key=f"text {pre} {tokenizer.name_or_path} {len(tokenizer)}",
                      lengths=lambda samples: token_lengths(tokenizer, samples), decodes=False)

    def trained_preprocess(self, p: Prepared):
        return p.backbone.preprocess

    def run_inputs(self, model, info) -> Inputs:
        """A finished run's evaluation inputs: its own tokenizer."""
        return Inputs(TextDataset, TextDataset, Tokenize(model.backbone.tokenizer, info.preprocess.max_length), "",
                      decodes=False)

    def input_items(self, info, inputs: list[str]) -> list:
        """`sft predict`'s texts as sample items (a run on text pairs takes each as 'first<TAB>second')."""
        return [text_item(text, info.preprocess.pair) for text in inputs]

    def write_backbone(self, run: RunDir, model, info) -> None:
        """The encoder's config and tokenizer (backbone/), and a LoRA run's adapter (adapter/)."""
        write_encoder(run, model, info)

    def read_backbone(self, run_dir: Path, info):
        return read_encoder(run_dir, info)

    def text_lengths(self, recipe: Recipe, splits: Splits, inputs: Inputs, notes: dict) -> np.ndarray | None:
        """One tokenizer pass over the training texts: counts (in `notes`) those data.max_length truncates, and gives
        their lengths when data.group_by_length groups batches by them (else None)."""
        lengths = inputs.lengths(splits.train)
        truncated = int((lengths > recipe.data.max_length).sum())
        notes["truncated_train_texts"] = truncated
        if truncated:
            notes.setdefault("warnings", []).append(
                f"{truncated} of {len(splits.train)} training texts are longer than data.max_length="
                f"{recipe.data.max_length} tokens and are truncated")
        return lengths if recipe.data.group_by_length else None


def split_scorer(p: Prepared, model: nn.Module, cached: bool) -> Callable[[str, object], dict]:
    """`score(split, scorer)` at training's end: a split scored by the finished `model` in fp32, as `sft eval` and
    `predict` see it, on the cached features only when training ran in fp32 (bf16 features would score another model
    than the export)."""
    cached = cached and p.precision == "32-true"

    def score(split: str, scorer) -> dict:
        return score_batches(model, p.data.eval_dataset(split, cached), scorer, batch_size=128,
                             collate_fn=None if cached else p.data.collate, precision="32-true",
                             progress=p.recipe.trainer.progress and split == "test")
    return score


def load_pooled(task, run_dir: Path, info, outputs: int,
                wrap: Callable[[nn.Module, nn.Module], nn.Module]) -> nn.Module:
    """A finished run's model in eval mode: its backbone and a head of `outputs` from its files, `wrap(backbone,
    head)` the task's finished model, in the memory layout it trained in (mixed layouts are several times slower on
    CPU)."""
    backbone, head = load_model_files(run_dir, task.read_backbone(run_dir, info),
                                      new_head(info.num_features, outputs, info.dropout))
    model = wrap(backbone, head).eval()
    if info.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def prediction_samples(task, info, inputs: list[str], names: list[str], outputs: int = 0) -> Samples:
    """`sft predict`'s inputs as samples of the task's input kind: without labels (class indices 0), or with `outputs`
    numbers of 0 each when the task regresses that many."""
    items = task.input_items(info, inputs)
    kind = "text" if task.inputs == "texts" else "image"
    if outputs:
        return Samples(items, None, names, list(inputs), kind, targets=np.zeros((len(items), outputs), np.float32))
    return Samples(items, np.zeros(len(items), dtype=np.int64), names, list(inputs), kind)


class PooledTask(TaskBase):
    """The steps of a finished pooled-vector run every such task takes as they are: its model.json read as the
    task's `info_type`, its model on PyTorch (the task's `load_torch`) or its ONNX export, the same-data check of
    `sft eval`, the predictor of `sft serve` (the task's `serving` class); head-only epochs on cached features."""
    info_type: type = object  # the task's model.json record (a dataclass)
    onnx: type  # `sft export --format onnx` and `--engine onnx`: OnnxPooled or OnnxPooledText
    serving: type  # `sft serve`

    def uses_feature_cache(self, recipe: Recipe) -> bool:
        return True

    def run_info(self, run_dir: Path):
        return read_run_info(run_dir, self.info_type, partial(with_preprocess, kind=self.preprocess))

    def same_data(self, source: Source, samples: Samples):
        """The same source and the same samples (by fingerprint): the same data again, say after retraining."""
        this = data_identity(source, samples)
        return lambda data: (data["source"], data["fingerprint"]) == (this["source"], this["fingerprint"])

    def load_run(self, run_dir: Path, info, engine: str = "torch"):
        """The run's model on PyTorch, or its ONNX export through onnxruntime."""
        if engine == "onnx":
            return load_onnx(run_dir, self.onnx)
        if engine != "torch":
            raise UserError(f"--engine {engine}: expected torch or onnx")
        return self.load_torch(Path(run_dir), info)

    def load_torch(self, run_dir: Path, info) -> nn.Module:
        """The run's PyTorch model in eval mode, from its files."""
        raise NotImplementedError

    def load_trained(self, run_dir: Path):
        """(model, info) of a finished run on PyTorch: what `sft export` converts and tests inspect."""
        info = self.run_info(Path(run_dir))
        return self.load_run(Path(run_dir), info), info

    def predictor(self, run_dir, options):
        return self.serving(self, run_dir, options.engine)

    render: Callable[[dict, Samples], str]  # the task's report.html of results.json and the evaluated samples

    def report_samples(self, recipe: Recipe, source: Source, results: dict) -> Samples:
        """The evaluated samples again, read as `sft eval` read them (the task's `read_split`)."""
        return self.read_split(source, recipe)

    def report(self, run_dir, eval_dir):
        """`sft report`: report.html again from an evaluation's results.json and the evaluated data (which must be
        unchanged)."""
        out = Path(eval_dir) if eval_dir else Path(run_dir) / "eval"
        try:
            results = json.loads((out / "results.json").read_text(encoding="utf-8"))
            stored, fingerprint = results["data"]["source"], results["data"]["fingerprint"]
        except FileNotFoundError:
            raise UserError(f"{out}: no results.json; run `sft eval {run_dir}` first") from None
        except (OSError, ValueError, LookupError, TypeError) as e:  # damaged, or not what sft eval writes
            raise UserError(f"{out / 'results.json'}: damaged or not an evaluation of sft ({type(e).__name__}); run "
                            f"`sft eval {run_dir} --overwrite` again") from None
        recipe = load_recipe(RunDir(run_dir).recipe)
        samples = self.report_samples(recipe, source_of(recipe, stored), results)
        if samples.fingerprint() != fingerprint:
            raise UserError(f"{stored['path']}: the data changed since it was evaluated; run `sft eval` again (with "
                            f"--overwrite)")
        atomic_write_text(out / "report.html", type(self).render(results, samples) + "\n")
        return out / "report.html"


# -- the ONNX export ---------------------------------------------------------------------------------------------

PARITY_SAMPLES = 128  # from the run's validation split, then its test split
MIN_SAMPLES = 64
PARITY_BATCH = 32  # "batch N" of the parity check


class OnnxPooled(OnnxModule):
    """An exported image model, called as the run's PyTorch model is. `graph` is how a run's model becomes
    the graph: its inputs, their dynamic axes, what the export folder keeps beside it."""

    def __init__(self, folder: Path):
        super().__init__(folder / "model.onnx")

    @staticmethod
    def graph(model: nn.Module, info, example) -> dict:
        return {"graph": model, "inputs": ["input"], "example": (example,), "dynamic": {"input": {0: "batch"}},
                "meta": {"transform": str(eval_transform(info))}, "extra": None}


class _Positional(nn.Module):
    """The text model with positional tensor inputs, as the ONNX graph takes them."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors)))


class OnnxPooledText(OnnxPooled):
    """An exported text model with the export's own tokenizer (`run_inputs` reads it from `backbone.tokenizer`,
    as from a TextEncoder). Its graph takes the tokenizer's tensors, batch and sequence axes free; a LoRA run's
    adapters are merged into a copy's encoder (the parity check compares with the unmerged model)."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        from transformers import AutoTokenizer  # deferred: image runs never need transformers here
        self.backbone = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(str(folder)))

    @staticmethod
    def graph(model: nn.Module, info, example) -> dict:
        names, exported = list(example), model
        if info.lora:
            exported = copy.deepcopy(model)
            exported.backbone.model = exported.backbone.model.merge_and_unload()
        return {"graph": _Positional(exported, names), "inputs": names, "example": tuple(example[n] for n in names),
                "dynamic": {n: {0: "batch", 1: "sequence"} for n in names}, "meta": {},
                "extra": model.backbone.tokenizer.save_pretrained}


def load_onnx(run_dir: str | Path, kind: type[OnnxPooled]) -> OnnxPooled:
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


def export_onnx(task, run_dir: str | Path, out: str | Path | None, *, force: bool, overwrite: bool,
                terms: Callable[[object], dict]) -> tuple[Path, dict]:
    """Convert the run's model (the graph `task.onnx` makes of it), check it against the PyTorch model and write the
    export folder (see the module docstring); `terms(info)`: how the parity check compares the outputs and what
    model.json says of them (sft.models.export.export_onnx_checked's temperature, or scale, output and meaning). A
    failed check writes nothing unless `force`. Returns the folder and the parity result."""
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
                                 force=force, meta=meta, extra=g["extra"], **{"temperature": 1.0, **terms(info)},
                                 facts={"samples": sum(len(p) for p in parts), "lora_merged": bool(info.lora)})
    return out, result
