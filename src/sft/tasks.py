"""What differs between tasks: how a split is read, which backbone encodes it, how samples become batches.

Image and text classification share everything else (strategies, optimizer, the classifier module, the engine, the
run directory), so a new input kind is one more branch here, not a change to the engine.
"""

from __future__ import annotations

from sft.backbones import Backbone, create_backbone
from sft.data import Inputs, ImageDataset, build_transforms
from sft.errors import UserError
from sft.recipe import Data, Recipe, Source
from sft.sources import Samples, read_samples

TEXT = "text-classification"


def read_split(source: Source, data: Data, task: str, classes: list[str] | None) -> Samples:
    if task == TEXT:
        from sft.text import read_texts
        return read_texts(source.path, format=source.format, text_column=data.text_column,
                          pair_column=data.text_pair_column, label_column=data.label_column, classes=classes)
    if source.format in ("tsv", "jsonl"):
        raise UserError(f"{source.path}: format {source.format} holds texts; set task: text-classification")
    return read_samples(source.path, labels=source.labels, format=source.format, classes=classes)


def build_backbone(recipe: Recipe) -> Backbone:
    """The recipe's backbone with its weights, LoRA-wrapped when the strategy is lora."""
    m = recipe.model
    if recipe.task != TEXT:
        backbone = create_backbone(m.backbone, m.weights)
        if recipe.strategy.name == "lora":
            raise UserError("strategy lora is for text backbones (transformers); for images use partial or full")
        return backbone
    from sft.text import TextPreprocess, create_text_encoder, layer_groups
    encoder, config, weights_id = create_text_encoder(m.backbone, m.weights, m.pooling)
    if recipe.strategy.name == "lora":
        from sft.lora import add_lora
        encoder.model = add_lora(encoder.model, recipe.strategy)
    preprocess = TextPreprocess(recipe.data.max_length, m.pooling, pair=recipe.data.text_pair_column is not None)
    return Backbone(m.backbone, encoder, config.hidden_size, layer_groups(encoder, config.num_hidden_layers),
                    preprocess, weights_id)


def build_inputs(backbone: Backbone, data: Data | None, task: str) -> Inputs:
    """Datasets and collate for the backbone: its transforms (images) or its tokenizer (texts). data=None: a
    finished run's evaluation inputs (its stored preprocessing, no augmentation)."""
    if task == TEXT:
        from sft.text import TextDataset, Tokenize, token_lengths
        pre, tokenizer = backbone.preprocess, backbone.module.tokenizer
        return Inputs(TextDataset, TextDataset, Tokenize(tokenizer, pre.max_length),
                      key=f"text {pre} {tokenizer.name_or_path} {len(tokenizer)}",
                      lengths=lambda samples: token_lengths(tokenizer, samples))
    size, augment = (data.image_size, data.augment) if data is not None else (None, "none")
    train_tf, eval_tf = build_transforms(backbone.preprocess, size, augment)
    return Inputs(lambda s: ImageDataset(s, train_tf), lambda s: ImageDataset(s, eval_tf), None, key=str(eval_tf))


def run_inputs(model, info) -> Inputs:
    """A finished run's evaluation inputs, from what the run stored: its eval transform, or its own tokenizer."""
    if info.task == TEXT:
        from sft.text import TextDataset, Tokenize
        return Inputs(TextDataset, TextDataset, Tokenize(model.backbone.tokenizer, info.preprocess.max_length), "")
    _, eval_tf = build_transforms(info.preprocess, None, "none")
    return Inputs(lambda s: ImageDataset(s, eval_tf), lambda s: ImageDataset(s, eval_tf), None, key=str(eval_tf))


def prediction_batches(model, info, items: list[str], batch_size: int = 64):
    """A finished run's model inputs for unlabelled image files or texts (pairs: tab-separated), batch by batch."""
    import numpy as np
    from torch.utils.data import DataLoader

    if info.task == TEXT and info.preprocess.pair:
        bad = [t for t in items if "\t" not in t]
        if bad:
            raise UserError(f"this run classifies text pairs: give each as 'first<TAB>second' ({bad[0]!r})")
        items = [tuple(t.split("\t", 1)) for t in items]
    kind = "text" if info.task == TEXT else "image"
    samples = Samples(items, np.zeros(len(items), dtype=np.int64), info.classes, [str(i) for i in items], kind)
    inputs = run_inputs(model, info)
    for x, _ in DataLoader(inputs.eval(samples), batch_size=batch_size, collate_fn=inputs.collate):
        yield x
