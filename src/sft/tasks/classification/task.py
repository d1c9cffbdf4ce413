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
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sft.core.rundir import RunDir
from sft.data.images import read_samples
from sft.data.loaders import Inputs
from sft.data.samples import Samples, stratified_subset
from sft.data.splits import Splits, load_splits
from sft.data.texts import read_texts
from sft.errors import UserError
from sft.models.tta import FlipAverage
from sft.recipe import Source
from sft.tasks import load_recipe
from sft.tasks.base import data_identity, score_batches, source_of, write_model_files
from sft.tasks.classification.calibration import calibrate_run, fit_unstored, validation_logits
from sft.tasks.classification.conformal import SetCounts, fit_run, run_fit, set_rows, stored_fit
from sft.tasks.classification.export import ModelInfo, TrainedClassifier, load_model
from sft.tasks.classification.hf import export_text_hf, export_timm_hf
from sft.tasks.classification.metrics import Scores, summarize
from sft.tasks.classification.module import Classifier
from sft.tasks.classification.onnx import OnnxClassifier, OnnxTextClassifier, export_onnx
from sft.tasks.classification.options import DEFAULT_COVERAGE, IMAGE_OPTIONS, OPTIONS
from sft.tasks.classification.probe import fit_probe, load_probe
from sft.tasks.classification.recipe import ClassificationRecipe, ImageClassificationRecipe, TextClassificationRecipe
from sft.tasks.classification.report import build_report, class_samples, write_report
from sft.tasks.classification.serving import ImagePredictor, TextPredictor, class_probabilities, ranked
from sft.tasks.classification.tools.audit import audit_data
from sft.tasks.classification.tools.strategy_auto import choose_strategy
from sft.tasks.classification.tools.transfer import logme
from sft.tasks.pooled import PooledImages, PooledTask, PooledTexts, prediction_samples
from sft.training.optim import is_transformer
from sft.training.prepare import Prepared
from sft.training.trainer import Monitor

log = logging.getLogger("sft")


def flips(options) -> bool:
    """--tta flip was asked (image runs; text runs have no such option)."""
    return getattr(options, "tta", "none") == "flip"


class ImageClassification(PooledImages, PooledTask):
    name = "image-classification"
    description = "one label per image: a new linear head on a pretrained timm/torchvision backbone"
    recipe = ImageClassificationRecipe
    monitor = Monitor("val_acc", "max")
    options = IMAGE_OPTIONS
    info_type = ModelInfo  # model.json
    onnx = OnnxClassifier  # `sft export --format onnx` and `--engine onnx`
    serving = ImagePredictor  # `sft serve`

    # -- data and model ------------------------------------------------------------------------------------------
    def read_split(self, source: Source, recipe: ClassificationRecipe, classes: list[str] | None) -> Samples:
        return read_samples(source.path, labels=source.labels, format=source.format, classes=classes)

    def load_splits(self, recipe: ClassificationRecipe) -> Splits:
        d = recipe.data
        return load_splits(d, recipe.seed, lambda source, classes: self.read_split(source, recipe, classes),
                           classes=d.classes, exclude=d.exclude, relabel=d.relabel)

    def prediction_samples(self, info: ModelInfo, inputs: list[str]) -> Samples:
        """`sft predict`'s inputs as samples."""
        return prediction_samples(self, info, inputs, info.classes)

    # -- training ------------------------------------------------------------------------------------------------
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
    def load_torch(self, run_dir: Path, info: ModelInfo) -> TrainedClassifier:
        return load_model(run_dir, info, self.read_backbone(run_dir, info))

    def eval_samples(self, recipe: ClassificationRecipe, source: Source, info: ModelInfo) -> Samples:
        """The labelled data, read with the run's classes (texts: with the recipe's columns), which it must have."""
        samples = self.read_split(source, recipe, info.classes)
        check_classes(samples.classes, info.classes, source.path)
        return samples

    def score_run(self, run, recipe, source, samples, model, info, options, *, batch_size, progress):
        """Fit the temperature and the prediction sets on the run's validation split if model.json never had them
        fitted (stored there), score the data under them, and draw the report (top losses, and a gallery per class,
        with Grad-CAM or token attributions)."""
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        inputs = self.run_inputs(model, info)
        flip = flips(options)
        scored = FlipAverage(model) if flip else model
        held_out = validation_logits(scored, lambda: self.load_splits(recipe).val, inputs, seed=recipe.seed,
                                     batch_size=batch_size, progress=progress)
        if flip:  # the stored fits describe the plain model's logits
            calibration = fit_unstored(info, held_out, penalty=options.raps_lambda, k_reg=options.raps_k)
            fit, fitted_now = stored_fit(info), True
        else:
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
        scores = score_batches(scored, dataset, scorer, batch_size=batch_size, collate_fn=inputs.collate,
                               progress=progress)
        for row in scores["top_losses"]:
            row["id"] = samples.ids[row["index"]]
        results = {"run_dir": str(run.path.resolve()), "data": data_identity(source, samples), "kind": samples.kind,
                   "classes": info.classes, "tta": "flip" if flip else "none", "calibration": calibration,
                   "metrics": scores,
                   "class_samples": class_samples(samples.labels, len(info.classes))}
        # the heat maps explain the plain model: a flipped view's map would need mirroring back onto the image
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
        if options.coverage is not None and not flips(options):
            run_fit(run_dir, self.run_info(Path(run_dir))).threshold(options.coverage)
        return super().predict(run_dir, inputs, options, stream)

    def inference_model(self, run_dir, model, info, options):
        """--tta flip: the model averaged over each image and its mirror image, with a temperature and prediction
        sets fitted on the validation split's averaged logits first (one pass over it; the RAPS penalty of the run's
        stored fit, if any)."""
        if not flips(options):
            return model, info
        flipped, recipe, plain = FlipAverage(model), load_recipe(RunDir(run_dir).recipe), stored_fit(info)
        held_out = validation_logits(flipped, lambda: self.load_splits(recipe).val, self.run_inputs(model, info),
                                     seed=recipe.seed)
        fit_unstored(info, held_out, penalty=plain.penalty if plain else 0.0, k_reg=plain.k_reg if plain else 1)
        return flipped, info

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



class TextClassification(PooledTexts, ImageClassification):
    name = "text-classification"
    description = "one label per text (or text pair): a new linear head on a pooled Hugging Face encoder"
    recipe = TextClassificationRecipe
    options = OPTIONS  # no --tta: a text has no mirror image
    onnx = OnnxTextClassifier
    serving = TextPredictor

    def read_split(self, source: Source, recipe: ClassificationRecipe, classes: list[str] | None) -> Samples:
        d = recipe.data
        return read_texts(source.path, format=source.format, text_column=d.text_column,
                          pair_column=d.text_pair_column, label_column=d.label_column, classes=classes)

    def loader_options(self, recipe: ClassificationRecipe, splits: Splits, inputs: Inputs, notes: dict) -> dict:
        return {"balance": recipe.data.balance, "lengths": self.text_lengths(recipe, splits, inputs, notes)}

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

