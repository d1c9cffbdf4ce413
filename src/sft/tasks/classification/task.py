"""Classification of images and texts behind the Task protocol: one label per sample, a new linear head on the
backbone's pooled vector, accuracy monitored, head-only epochs on cached features, and the after-training skeleton's
steps (a calibrated evaluation scored by metrics.Scores with its report, top-k predictions). Images and texts differ
only in how a split is read, which backbone encodes it, how samples become batches and which files rebuild the
backbone, how the model becomes an ONNX graph or a Hugging Face folder, and what a served request holds; the two
classes below are those differences."""

from __future__ import annotations

import json
import logging
from collections import Counter
from functools import partial
from pathlib import Path

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
from sft.models.backbone import Backbone, Preprocess
from sft.models.text_encoder import TextPreprocess, create_text_backbone
from sft.models.vision import create_backbone
from sft.recipe import Source
from sft.tasks import load_recipe
from sft.tasks.base import TaskBase, read_run_info, score_batches, source_of, with_preprocess, write_model_files
from sft.tasks.classification.calibration import calibrate_run, validation_logits
from sft.tasks.classification.conformal import SetCounts, fit_run, run_fit, set_rows
from sft.tasks.classification.export import (ModelInfo, TrainedClassifier, eval_transform, load_model, read_encoder,
                                             read_vision_backbone, used_preprocess, write_encoder)
from sft.tasks.classification.hf import export_text_hf, export_timm_hf
from sft.tasks.classification.metrics import Scores, summarize
from sft.tasks.classification.module import Classifier
from sft.tasks.classification.onnx import OnnxClassifier, OnnxTextClassifier, export_onnx, load_onnx
from sft.tasks.classification.options import DEFAULT_COVERAGE, OPTIONS
from sft.tasks.classification.probe import fit_probe, load_probe
from sft.tasks.classification.recipe import ClassificationRecipe, ImageClassificationRecipe, TextClassificationRecipe
from sft.tasks.classification.report import build_report, class_samples, write_report
from sft.tasks.classification.serving import ImagePredictor, TextPredictor, class_probabilities, ranked, text_item
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
    preprocess = Preprocess  # model.json's preprocessing
    onnx = OnnxClassifier  # `sft export --format onnx` and `--engine onnx`
    serving = ImagePredictor  # `sft serve`

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
        eval_tf = eval_transform(info)
        return Inputs(lambda s: ImageDataset(s, eval_tf), lambda s: ImageDataset(s, eval_tf), None, key=str(eval_tf))

    def prediction_samples(self, info: ModelInfo, inputs: list[str]) -> Samples:
        """`sft predict`'s image files as samples."""
        return Samples(inputs, np.zeros(len(inputs), dtype=np.int64), info.classes, inputs, "image")

    def write_backbone(self, run: RunDir, model, info: ModelInfo) -> None:
        """The files beside model.safetensors that rebuild the backbone: none, its name in model.json does."""

    def read_backbone(self, run_dir: Path, info: ModelInfo):
        """The run's backbone module, built from its files, its weights not loaded yet."""
        return read_vision_backbone(run_dir, info)

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

    def write_model(self, run: RunDir, p: Prepared) -> None:
        """The run's model files: the backbone's own (texts), then model.safetensors and model.json."""
        r = p.recipe
        info = ModelInfo(backbone=p.backbone.name, classes=p.splits.classes, num_features=p.backbone.num_features,
                         preprocess=self.trained_preprocess(p),
                         dropout=r.model.dropout, channels_last=p.channels_last, task=self.name,
                         lora=r.strategy.model_dump() if r.strategy.name == "lora" else None)
        self.write_backbone(run, p.model, info)
        write_model_files(run.path, p.model, info)

    def final_metrics(self, p: Prepared, cached: bool) -> dict:
        """Validation and test scores of the best model as `sft eval` and `predict` see it: in fp32 (cached
        features when the backbone never trained and they were computed in fp32)."""
        metrics, classes = {}, p.splits.classes
        cached = cached and p.precision == "32-true"  # bf16 features would score another model than the export
        for split in ("val", "test"):
            if getattr(p.splits, split) is None:
                continue
            result = score_batches(p.model, p.data.eval_dataset(split, cached), Scores(len(classes)), batch_size=128,
                                   collate_fn=None if cached else p.data.collate, precision="32-true",
                                   progress=p.recipe.trainer.progress and split == "test")
            metrics.update({f"{split}_loss": result["loss"], f"{split}_balanced_acc": result["balanced_accuracy"],
                            f"{split}_macro_f1": result["macro_f1"], f"{split}_samples": result["samples"],
                            f"{split}_recall": dict(zip(classes, result["per_class_recall"]))})
            if split == "test":
                metrics["test_acc"] = result["accuracy"]
        return metrics

    # -- a finished run: the skeleton's steps --------------------------------------------------------------------
    def run_info(self, run_dir: Path) -> ModelInfo:
        return read_run_info(run_dir, ModelInfo, partial(with_preprocess, kind=self.preprocess))

    def eval_samples(self, recipe: ClassificationRecipe, source: Source, info: ModelInfo) -> Samples:
        """The labelled data, read with the run's classes (texts: with the recipe's columns), which it must have."""
        samples = self.read_split(source, recipe, info.classes)
        check_classes(samples.classes, info.classes, source.path)
        return samples

    def same_data(self, source: Source, samples: Samples):
        """The same source and the same samples (by fingerprint): the same data again, say after retraining."""
        this = data_identity(source, samples)
        return lambda data: (data["source"], data["fingerprint"]) == (this["source"], this["fingerprint"])

    def load_run(self, run_dir: Path, info: ModelInfo, engine: str = "torch"):
        """The run's model on PyTorch, or its ONNX export through onnxruntime."""
        if engine == "onnx":
            return load_onnx(run_dir, self.onnx)
        if engine != "torch":
            raise UserError(f"--engine {engine}: expected torch or onnx")
        return load_model(run_dir, info, self.read_backbone(Path(run_dir), info))

    def load_trained(self, run_dir: Path) -> tuple[TrainedClassifier, ModelInfo]:
        """(model, info) of a finished run on PyTorch: what `sft export` converts and tests inspect."""
        info = self.run_info(Path(run_dir))
        return self.load_run(Path(run_dir), info), info

    def score_run(self, run, recipe, source, samples, model, info, options, *, batch_size, progress):
        """Fit the temperature and the prediction sets on the run's validation split if model.json never had them
        fitted (stored there), score the data under them, and draw the report (top losses, and a gallery per class,
        with Grad-CAM or token attributions)."""
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        inputs = self.run_inputs(model, info)
        held_out = validation_logits(model, lambda: self.load_splits(recipe).val, inputs, seed=recipe.seed,
                                     batch_size=batch_size, progress=progress)
        calibration = calibrate_run(run.path, info, held_out)
        fit, fitted_now = fit_run(run.path, info, held_out, penalty=options.raps_lambda, k_reg=options.raps_k)
        try:
            sets = SetCounts(fit, options.coverage or DEFAULT_COVERAGE, len(info.classes), fitted_now)
        except UserError as e:  # a validation split too small for the coverage: an error only when asked for
            if options.coverage is not None:
                raise
            log.warning(f"no prediction sets in this evaluation: {e}")
            sets = None
        dataset = inputs.eval(samples)
        scorer = Scores(len(info.classes), temperature=calibration["temperature"], top_losses=options.top_losses,
                        sets=sets)
        scores = score_batches(model, dataset, scorer, batch_size=batch_size, collate_fn=inputs.collate,
                               progress=progress)
        for row in scores["top_losses"]:
            row["id"] = samples.ids[row["index"]]
        results = {"run_dir": str(run.path.resolve()), "data": data_identity(source, samples), "kind": samples.kind,
                   "classes": info.classes, "calibration": calibration, "metrics": scores,
                   "class_samples": class_samples(samples.labels, len(info.classes))}
        page = build_report(results, model.cpu(), info, samples, dataset, inputs.collate, progress=progress)
        return results, summarize(results), page

    def evaluate(self, run_dir, data, out, options, *, overwrite, batch_size, progress):
        """`sft eval` as the skeleton runs it; printed with each class's recall only (metrics.json has them all)."""
        out, summary = super().evaluate(run_dir, data, out, options, overwrite=overwrite, batch_size=batch_size,
                                        progress=progress)
        shown = {k: v for k, v in summary.items() if k != "per_class"}
        return out, shown | {"per_class_recall": {c: v["recall"] for c, v in summary["per_class"].items()}}

    def report(self, run_dir, eval_dir):
        """`sft report`: report.html again from an evaluation's results.json (the evaluated data, which must be
        unchanged, read again; Grad-CAM run again)."""
        out = Path(eval_dir) if eval_dir else Path(run_dir) / "eval"
        if not (out / "results.json").exists():
            raise UserError(f"{out}: no results.json; run `sft eval {run_dir}` first")
        try:
            results = json.loads((out / "results.json").read_text(encoding="utf-8"))
            stored, fingerprint = results["data"]["source"], results["data"]["fingerprint"]
        except (OSError, ValueError, LookupError, TypeError) as e:  # damaged, or not what sft eval writes
            raise UserError(f"{out / 'results.json'}: damaged or not an evaluation of sft ({type(e).__name__}); run "
                            f"`sft eval {run_dir} --overwrite` again") from None
        info = self.run_info(Path(run_dir))
        recipe = load_recipe(RunDir(run_dir).recipe)
        source = source_of(recipe, stored)
        samples = self.eval_samples(recipe, source, info)
        if samples.fingerprint() != fingerprint:
            raise UserError(f"{results['data']['source']['path']}: the data changed since it was evaluated; run "
                            f"`sft eval` again (with --overwrite)")
        model = self.load_run(Path(run_dir), info)
        inputs = self.run_inputs(model, info)
        write_report(out, results, model, info, samples, inputs.eval(samples), inputs.collate, progress=True)
        return out / "report.html"

    def predict(self, run_dir, inputs, options, stream=None):
        """`sft predict`; with --coverage, the run's prediction-set fit is checked before the model loads."""
        if options.coverage is not None:
            run_fit(run_dir, self.run_info(Path(run_dir))).threshold(options.coverage)
        return super().predict(run_dir, inputs, options, stream)

    def predict_rows(self, model, info, inputs, options, folder, stream) -> list[dict]:
        """The top-k labels of each input, with the run's calibrated probabilities; with a coverage, each row also
        holds the input's prediction set (its classes, most probable first)."""
        samples, loaded = self.prediction_samples(info, inputs), self.run_inputs(model, info)
        probs = torch.cat([class_probabilities(model, x, info.temperature)
                           for x, _ in DataLoader(loaded.eval(samples), batch_size=64, collate_fn=loaded.collate)])
        sets = (set_rows(probs, run_fit("this run", info), options.coverage, info.classes)
                if options.coverage is not None else None)
        rows = []
        for i, item in enumerate(inputs):
            in_set = {"set": sets[i]} if sets is not None else {}
            rows += [{self.column: item, "rank": r + 1, "label": label, "probability": round(p, 4), **in_set}
                     for r, (label, p) in enumerate(ranked(probs[i], info.classes, options.top_k))]
        return rows

    def export(self, run_dir, out, options, *, force: bool, overwrite: bool) -> tuple:
        if options.format == "onnx":
            return export_onnx(self, run_dir, out, force=force, overwrite=overwrite)
        return self.export_hf(run_dir, out, force=force, overwrite=overwrite)

    def export_hf(self, run_dir, out, *, force: bool, overwrite: bool) -> tuple:
        """`sft export --format hf`: timm's Hugging Face folder (timm backbones only)."""
        return export_timm_hf(self, run_dir, out, force=force, overwrite=overwrite)

    def audit(self, recipe: ClassificationRecipe, out, *, overwrite, also):
        """`sft audit`: label issues, duplicates, leakage, outliers and imbalance of the recipe's data (tools.audit)."""
        report = audit_data(self, recipe, out, overwrite=overwrite, also=also)
        return {"imbalance_ratio": report.imbalance_ratio, "out_of_fold_accuracy": report.oof_accuracy,
                "suspects": dict(Counter(s.kind for s in report.suspects)), "train_counts": report.counts["train"],
                "train_without_them": f"data.exclude={out}/suspects.csv"}

    def predictor(self, run_dir, options):
        return self.serving(self, run_dir, options.engine)


class TextClassification(ImageClassification):
    name = "text-classification"
    description = "one label per text (or text pair): a new linear head on a pooled Hugging Face encoder"
    recipe = TextClassificationRecipe
    column = "text"
    inputs = "texts"
    preprocess = TextPreprocess
    onnx = OnnxTextClassifier
    serving = TextPredictor

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

    def prediction_samples(self, info: ModelInfo, inputs: list[str]) -> Samples:
        """`sft predict`'s texts as samples (a run on text pairs takes each as 'first<TAB>second')."""
        items = [text_item(text, info.preprocess.pair) for text in inputs]
        return Samples(items, np.zeros(len(items), dtype=np.int64), info.classes, list(inputs), "text")

    def write_backbone(self, run: RunDir, model, info: ModelInfo) -> None:
        """The encoder's config and tokenizer (backbone/), and a LoRA run's adapter (adapter/)."""
        write_encoder(run, model, info)

    def read_backbone(self, run_dir: Path, info: ModelInfo):
        return read_encoder(run_dir, info)

    def loader_options(self, recipe: ClassificationRecipe, splits: Splits, inputs: Inputs, notes: dict) -> dict:
        lengths = inputs.lengths(splits.train)  # one tokenizer pass: counts truncation, groups batches by length
        truncated = int((lengths > recipe.data.max_length).sum())
        notes["truncated_train_texts"] = truncated
        if truncated:
            notes.setdefault("warnings", []).append(
                f"{truncated} of {len(splits.train)} training texts are longer than data.max_length="
                f"{recipe.data.max_length} tokens and are truncated")
        return {"balance": recipe.data.balance, "lengths": lengths if recipe.data.group_by_length else None}

    def export_hf(self, run_dir, out, *, force: bool, overwrite: bool) -> tuple:
        """`sft export --format hf`: a transformers folder with the encoder, the run's pooling and head."""
        return export_text_hf(self, run_dir, out, force=force, overwrite=overwrite)


def check_classes(data: list[str], run: list[str], where) -> None:
    """The evaluated data's classes are the run's, in its order, or a UserError naming the difference."""
    if list(data) != list(run):
        only_data, only_run = sorted(set(data) - set(run)), sorted(set(run) - set(data))
        detail = (f"only in the data: {only_data}; only in the run: {only_run}" if only_data or only_run
                  else f"same names in another order: data {list(data)}, run {list(run)}")
        raise UserError(f"{where}: classes differ from the run's ({detail})")


def data_identity(source: Source, samples: Samples) -> dict:
    """results.json's "data": the source as the recipe gives it, the samples' fingerprint and count."""
    return {"source": source.model_dump(), "fingerprint": samples.fingerprint(), "samples": len(samples)}
