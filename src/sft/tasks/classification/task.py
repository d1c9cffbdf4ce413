"""Classification of images and texts behind the Task protocol: one label per sample, a new linear head on the
backbone's pooled vector, accuracy monitored, head-only epochs on cached features, a calibrated report and top-k
predictions. Images and texts differ only in how a split is read, which backbone encodes it and how samples become
batches; the two classes below are those differences."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch
from torch.utils.data import DataLoader

from sft.core.rundir import RunDir
from sft.data.images import ImageDataset, build_transforms, read_samples
from sft.data.loaders import Inputs
from sft.data.samples import Samples, stratified_subset
from sft.data.splits import Splits, load_splits
from sft.data.texts import TextDataset, Tokenize, read_texts, token_lengths
from sft.errors import UserError
from sft.models.backbone import Backbone
from sft.models.text_encoder import create_text_backbone
from sft.models.vision import create_backbone
from sft.recipe import Source
from sft.tasks.base import TaskBase
from sft.tasks.classification.evaluation import evaluate, evaluate_run, predict, rebuild_report
from sft.tasks.classification.export import ModelInfo, export_model, used_preprocess
from sft.tasks.classification.hf import export_hf, export_timm_hf
from sft.tasks.classification.module import Classifier
from sft.tasks.classification.probe import fit_probe, load_probe
from sft.tasks.classification.onnx import export_onnx
from sft.tasks.classification.options import OPTIONS
from sft.tasks.classification.serving import ClassifierPredictor, load_engine
from sft.tasks.classification.recipe import (TEXT, ClassificationRecipe, ImageClassificationRecipe,
                                             TextClassificationRecipe)
from sft.tasks.classification.tools.audit import audit_data
from sft.tasks.classification.tools.strategy_auto import choose_strategy
from sft.tasks.classification.tools.transfer import logme
from sft.training.optim import is_transformer
from sft.training.prepare import Prepared
from sft.training.trainer import Monitor

log = logging.getLogger("sft")


class ImageClassification(TaskBase):
    name = "image-classification"
    description = "one label per image: a new linear head on a pretrained timm/torchvision backbone"
    recipe = ImageClassificationRecipe
    monitor = Monitor("val_acc", "max")
    column = "file"  # what `sft predict` rows call an input
    options = OPTIONS

    # -- data and model ------------------------------------------------------------------------------------------
    def read_split(self, source: Source, recipe: ClassificationRecipe, classes: list[str] | None) -> Samples:
        return read_samples(source.path, labels=source.labels, format=source.format, classes=classes)

    def load_splits(self, recipe: ClassificationRecipe) -> Splits:
        d = recipe.data
        return load_splits(d, recipe.seed, lambda source, classes: self.read_split(source, recipe, classes),
                           classes=d.classes, exclude=d.exclude, relabel=d.relabel)

    def build_backbone(self, recipe: ClassificationRecipe) -> Backbone:
        return create_backbone(recipe.model.backbone, recipe.model.weights)

    def build_inputs(self, backbone: Backbone, recipe: ClassificationRecipe | None) -> Inputs:
        """Datasets and collate in the backbone's transforms; recipe=None: evaluation inputs (no augmentation)."""
        size, augment = (recipe.data.image_size, recipe.data.augment) if recipe is not None else (None, "none")
        train_tf, eval_tf = build_transforms(backbone.preprocess, size, augment)
        return Inputs(lambda s: ImageDataset(s, train_tf), lambda s: ImageDataset(s, eval_tf), None, key=str(eval_tf))

    def trained_preprocess(self, p: Prepared):
        """The preprocessing the run trained with: the backbone's own, at data.image_size when set."""
        return used_preprocess(p.backbone.preprocess, p.recipe.data.image_size)

    def run_inputs(self, model, info: ModelInfo) -> Inputs:
        """A finished run's evaluation inputs, from what the run stored: its eval transform."""
        _, eval_tf = build_transforms(info.preprocess, None, "none")
        return Inputs(lambda s: ImageDataset(s, eval_tf), lambda s: ImageDataset(s, eval_tf), None, key=str(eval_tf))

    def prediction_samples(self, info: ModelInfo, files: list[str], texts: list[str]) -> tuple[list, Samples]:
        if texts:
            raise UserError("this run classifies images: pass image files, not --text/--file")
        return files, Samples(files, np.zeros(len(files), dtype=np.int64), info.classes, files, "image")

    # -- training ------------------------------------------------------------------------------------------------
    def uses_feature_cache(self, recipe: ClassificationRecipe) -> bool:
        return True

    def loader_options(self, recipe: ClassificationRecipe, splits: Splits, inputs: Inputs, notes: dict) -> dict:
        return {"balance": recipe.data.balance}

    def choose_strategy(self, recipe: ClassificationRecipe, splits: Splits, train_features: torch.Tensor,
                        notes: dict) -> ClassificationRecipe:
        """strategy: auto -> linear-probe, two-stage or full, from the data size and the LogME of the backbone's
        features on (up to 2,000 of) the training samples; these features come from the cache the head-only
        epochs use anyway."""
        labels = splits.train.labels
        idx = stratified_subset(labels, min(len(labels), 2000), recipe.seed) if len(labels) > 2000 else slice(None)
        score = logme(train_features[idx].numpy(), labels[idx])
        name, reason = choose_strategy(len(labels), len(splits.classes), {"logme": score})
        log.warning(f"strategy auto: {name}, because {reason}")
        notes["strategy_auto"] = {"chosen": name, "reason": reason, "logme": round(float(score), 4)}
        return recipe.model_copy(update={"strategy": recipe.strategy.model_copy(update={"name": name})})

    def build_module(self, recipe, backbone, splits, schedule, channels_last) -> Classifier:
        return Classifier(backbone, splits, schedule, recipe, channels_last)

    def start_head(self, recipe: ClassificationRecipe, model: Classifier, splits: Splits, features) -> dict | None:
        """A converged linear probe (L-BFGS on the cached features, L2 chosen on val) as the head's start, when
        strategy.head_init asks for it (auto: linear-probe runs and transformer backbones, whose fine-tuning LR
        barely moves a new head in one head-only epoch)."""
        init = recipe.strategy.head_init
        if init == "random" or (init == "auto" and recipe.strategy.name != "linear-probe"
                                and not is_transformer(model.backbone)):
            return None
        labels = {split: torch.as_tensor(getattr(splits, split).labels, dtype=torch.long) for split in ("train", "val")}
        class_weight = getattr(model.loss_fn, "weight", None)  # a class-weighted loss weighs the probe too
        fit = fit_probe(features("train"), labels["train"], features("val"), labels["val"],
                        classes=len(splits.classes), class_weight=class_weight)
        load_probe(model.head, fit)
        return {"probe": fit.facts()}

    def export(self, run: RunDir, p: Prepared) -> None:
        r = p.recipe
        info = ModelInfo(backbone=p.backbone.name, classes=p.splits.classes, num_features=p.backbone.num_features,
                         preprocess=self.trained_preprocess(p),
                         dropout=r.model.dropout, channels_last=p.channels_last, task=self.name,
                         lora=r.strategy.model_dump() if r.strategy.name == "lora" else None)
        export_model(run, p.model, info)

    def final_metrics(self, p: Prepared, cached: bool) -> dict:
        """Validation and test scores of the best model as `sft eval` and `predict` see it: in fp32 (cached
        features when the backbone never trained and they were computed in fp32)."""
        metrics, classes = {}, p.splits.classes
        cached = cached and p.precision == "32-true"  # bf16 features would score another model than the export
        for split in ("val", "test"):
            if getattr(p.splits, split) is None:
                continue
            result = evaluate(p.model, p.data.eval_dataset(split, cached), len(classes), precision="32-true",
                              progress=p.recipe.trainer.progress and split == "test",
                              collate_fn=None if cached else p.data.collate)
            metrics.update({f"{split}_loss": result["loss"], f"{split}_balanced_acc": result["balanced_accuracy"],
                            f"{split}_macro_f1": result["macro_f1"], f"{split}_samples": result["samples"],
                            f"{split}_recall": dict(zip(classes, result["per_class_recall"]))})
            if split == "test":
                metrics["test_acc"] = result["accuracy"]
        return metrics

    # -- a finished run ------------------------------------------------------------------------------------------
    def evaluate(self, run_dir, data, out, options, *, overwrite, batch_size, progress):
        out, summary = evaluate_run(self, run_dir, data, out, overwrite, progress=progress, batch_size=batch_size,
                                    top_n=options.top_losses)
        per_class = summary.pop("per_class")
        summary["per_class_recall"] = {c: v["recall"] for c, v in per_class.items()}
        return out, summary

    def report(self, run_dir, eval_dir):
        return rebuild_report(self, run_dir, eval_dir)

    def predict(self, run_dir, inputs: list[str], options, stream=None) -> list[dict]:
        model, info = load_engine(run_dir, options.engine)
        files, texts = (inputs, []) if self.inputs == "files" else ([], inputs)
        items, samples = self.prediction_samples(info, files, texts)
        if not items:
            raise UserError("nothing to classify: give image files, --text or --file")
        inputs = self.run_inputs(model, info)
        results = [r for x, _ in DataLoader(inputs.eval(samples), batch_size=64, collate_fn=inputs.collate)
                   for r in predict(model, x, info.classes, options.top_k, temperature=info.temperature)]
        return [{self.column: item, "rank": r + 1, "label": label, "probability": round(p, 4)}
                for item, preds in zip(items, results) for r, (label, p) in enumerate(preds)]

    def export_model(self, run_dir, out, options, *, force: bool, overwrite: bool) -> tuple:
        format = options.format
        if format == "onnx":
            return export_onnx(self, run_dir, out, force=force, overwrite=overwrite)
        if format == "hf":
            export = export_hf if self.name == TEXT else export_timm_hf
            return export(self, run_dir, out, force=force, overwrite=overwrite)
        raise UserError(f"--format {format}: classification runs export as onnx or hf")

    def audit(self, recipe: ClassificationRecipe, out, *, overwrite, also):
        """`sft audit`: label issues, duplicates, leakage, outliers and imbalance of the recipe's data (tools.audit)."""
        report = audit_data(self, recipe, out, overwrite=overwrite, also=also)
        return {"imbalance_ratio": report.imbalance_ratio, "out_of_fold_accuracy": report.oof_accuracy,
                "suspects": dict(Counter(s.kind for s in report.suspects)), "train_counts": report.counts["train"],
                "train_without_them": f"data.exclude={out}/suspects.csv"}

    def predictor(self, run_dir, options) -> ClassifierPredictor:
        return ClassifierPredictor(self, run_dir, options.engine)


class TextClassification(ImageClassification):
    name = TEXT
    description = "one label per text (or text pair): a new linear head on a pooled Hugging Face encoder"
    recipe = TextClassificationRecipe
    column = "text"
    inputs = "texts"

    def read_split(self, source: Source, recipe: ClassificationRecipe, classes: list[str] | None) -> Samples:
        d = recipe.data
        return read_texts(source.path, format=source.format, text_column=d.text_column,
                          pair_column=d.text_pair_column, label_column=d.label_column, classes=classes)

    def build_backbone(self, recipe: ClassificationRecipe) -> Backbone:
        m = recipe.model
        return create_text_backbone(m.backbone, m.weights, m.pooling, recipe.data.max_length,
                                    pair=recipe.data.text_pair_column is not None,
                                    lora=recipe.strategy if recipe.strategy.name == "lora" else None)

    def build_inputs(self, backbone: Backbone, recipe: ClassificationRecipe | None) -> Inputs:
        pre, tokenizer = backbone.preprocess, backbone.module.tokenizer
        return Inputs(TextDataset, TextDataset, Tokenize(tokenizer, pre.max_length),
                      key=f"text {pre} {tokenizer.name_or_path} {len(tokenizer)}",
                      lengths=lambda samples: token_lengths(tokenizer, samples), decodes=False)

    def trained_preprocess(self, p: Prepared):
        return p.backbone.preprocess

    def run_inputs(self, model, info: ModelInfo) -> Inputs:
        """A finished run's evaluation inputs: its own tokenizer."""
        return Inputs(TextDataset, TextDataset, Tokenize(model.backbone.tokenizer, info.preprocess.max_length), "",
                      decodes=False)

    def prediction_samples(self, info: ModelInfo, files: list[str], texts: list[str]) -> tuple[list, Samples]:
        if files:
            raise UserError("this run classifies texts: pass --text \"...\" or --file FILE, not files")
        items: list = list(texts)
        if info.preprocess.pair:
            bad = [t for t in items if "\t" not in t]
            if bad:
                raise UserError(f"this run classifies text pairs: give each as 'first<TAB>second' ({bad[0]!r})")
            items = [tuple(t.split("\t", 1)) for t in items]
        return texts, Samples(items, np.zeros(len(items), dtype=np.int64), info.classes, list(texts), "text")

    def loader_options(self, recipe: ClassificationRecipe, splits: Splits, inputs: Inputs, notes: dict) -> dict:
        lengths = inputs.lengths(splits.train)  # one tokenizer pass: counts truncation, groups batches by length
        truncated = int((lengths > recipe.data.max_length).sum())
        notes["truncated_train_texts"] = truncated
        if truncated:
            notes.setdefault("warnings", []).append(
                f"{truncated} of {len(splits.train)} training texts are longer than data.max_length="
                f"{recipe.data.max_length} tokens and are truncated")
        return {"balance": recipe.data.balance, "lengths": lengths if recipe.data.group_by_length else None}
