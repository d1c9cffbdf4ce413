"""Multi-label classification of images and texts behind the Task protocol: several labels per sample (tags,
attributes, topics), a new linear head of one logit per label on the backbone's pooled vector, binary cross-entropy
(or the asymmetric loss), val_map (macro average precision) monitored, head-only epochs on cached features started
from one-vs-rest logistic regression fitted on them, per-label thresholds tuned on the validation split (each label's
F1-best, stored in model.json and used by predict, serve and the export's readers), a false-negative rate guaranteed
by conformal risk control, and the after-training skeleton's steps (scores with a report, predictions, ONNX export,
`sft serve`). The backbones, inputs, model files and exports are those every pooled-vector task shares
(sft.tasks.pooled); images and texts differ only there and in how a manifest row names its input."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sft.core.atomic import atomic_write_json, check_writable
from sft.core.conformal import store_fit
from sft.core.rundir import RunDir
from sft.data.loaders import Inputs
from sft.data.samples import Samples
from sft.data.splits import Splits, load_splits
from sft.errors import UserError
from sft.models.backbone import Preprocess
from sft.models.text_encoder import TextPreprocess
from sft.recipe import Source
from sft.tasks.base import data_identity, score_batches, write_model_files
from sft.tasks.multilabel.audit import audit_data
from sft.tasks.multilabel.data import read_multilabel
from sft.tasks.multilabel.metrics import MultilabelScores, f1_thresholds, summarize
from sft.tasks.multilabel.module import MultilabelClassifier, TrainedMultilabel, positive_weights
from sft.tasks.multilabel.options import OPTIONS
from sft.tasks.multilabel.probe import fit_one_vs_rest, load_one_vs_rest
from sft.tasks.multilabel.recipe import ImageMultilabelRecipe, MultilabelRecipe, TextMultilabelRecipe
from sft.tasks.multilabel.report import render
from sft.tasks.multilabel.risk import DEFAULT_FNR, KEY, fit_fnr, run_fnr, stored_fnr
from sft.tasks.multilabel.serving import (ImageMultilabelPredictor, TextMultilabelPredictor, chosen,
                                          predict_probabilities, thresholds_for)
from sft.tasks.pooled import (OnnxPooled, OnnxPooledText, PooledImages, PooledTask, PooledTexts, export_onnx,
                              load_pooled, prediction_samples, split_scorer)
from sft.training.optim import is_transformer
from sft.training.prepare import Prepared
from sft.training.trainer import Monitor

log = logging.getLogger("sft")


@dataclass
class MultilabelInfo:
    """Everything needed to rebuild and feed the trained model without the training data or the original weights
    (model.json)."""
    backbone: str
    classes: list[str]  # the labels, one head output each
    num_features: int
    preprocess: Preprocess | TextPreprocess
    thresholds: list[float]  # each label's: its F1-best on the validation split (training's end writes them)
    dropout: float = 0.0
    channels_last: bool = False
    task: str = "image-multilabel"
    lora: dict | None = None  # the strategy section of a lora run: rebuilds the same adapters
    extra: dict = field(default_factory=dict)  # extra["fnr"]: the conformal risk control fit


class ImageMultilabel(PooledImages, PooledTask):
    name = "image-multilabel"
    description = "several labels per image: a new linear head on a pretrained timm/torchvision backbone"
    recipe = ImageMultilabelRecipe
    monitor = Monitor("val_map", "max")
    options = OPTIONS
    info_type = MultilabelInfo  # model.json
    onnx = OnnxPooled  # `sft export --format onnx` and `--engine onnx`
    serving = ImageMultilabelPredictor  # `sft serve`
    render = staticmethod(render)  # report.html

    # -- data and model ------------------------------------------------------------------------------------------
    def read_split(self, source: Source, recipe: MultilabelRecipe, classes: list[str] | None = None) -> Samples:
        d = recipe.data
        return read_multilabel(source.path, kind="image", format=source.format, column=d.path_column,
                               **self.label_options(recipe, classes))

    def label_options(self, recipe: MultilabelRecipe, classes: list[str] | None) -> dict:
        d = recipe.data
        return {"label_column": d.label_column, "delimiter": d.label_delimiter, "label_columns": d.label_columns,
                "classes": classes if classes is not None else d.classes, "allow_empty": d.allow_empty}

    def load_splits(self, recipe: MultilabelRecipe) -> Splits:
        """Train, val (a seeded share of train when data.val is absent) and test, every row checked; the labels are
        data.classes or the training split's, and val and test may hold no other."""
        return load_splits(recipe.data, recipe.seed, lambda source, names: self.read_split(source, recipe, names),
                           recipe.data.classes)

    # -- training ------------------------------------------------------------------------------------------------
    def build_module(self, recipe, backbone, splits, schedule, channels_last) -> MultilabelClassifier:
        return MultilabelClassifier(backbone, splits, schedule, recipe, channels_last)

    def start_head(self, recipe: MultilabelRecipe, model, splits: Splits, features) -> dict | None:
        """One-vs-rest logistic regression on the cached features (L2 chosen on val mAP) as the head's start, when
        strategy.head_init asks for it (auto: linear-probe runs and transformer backbones)."""
        init = recipe.strategy.head_init
        if init == "random" or (init == "auto" and recipe.strategy.name != "linear-probe"
                                and not is_transformer(model.backbone)):
            return None
        weight = (positive_weights(splits.train.targets)
                  if recipe.optim.loss == "bce" and recipe.optim.pos_weight == "auto" else None)
        fit = fit_one_vs_rest(features("train"), splits.train.target_tensor(), features("val"),
                              splits.val.target_tensor(), pos_weight=weight)
        load_one_vs_rest(model.head, fit)
        return {"probe": fit.facts()}

    def write_model(self, run: RunDir, p: Prepared) -> None:
        """The run's model files: the backbone's own (texts), then model.safetensors and model.json (thresholds at
        0.5 until final_metrics tunes them)."""
        r = p.recipe
        info = MultilabelInfo(backbone=p.backbone.name, classes=p.splits.classes, num_features=p.backbone.num_features,
                              preprocess=self.trained_preprocess(p), thresholds=[0.5] * len(p.splits.classes),
                              dropout=r.model.dropout, channels_last=p.channels_last, task=self.name,
                              lora=r.strategy.model_dump() if r.strategy.name == "lora" else None)
        self.write_backbone(run, p.model, info)
        write_model_files(run.path, p.model, info)

    def final_metrics(self, p: Prepared, cached: bool) -> dict:
        """The best model's validation probabilities (in fp32, as `sft eval` and `predict` see them) tune each label's
        threshold and fit the false-negative-rate control, both stored in model.json; validation (at the thresholds
        tuned on it: optimistic) and test scores, and the FNR reached at DEFAULT_FNR on the test split."""
        score = split_scorer(p, TrainedMultilabel(p.model.backbone, p.model.head, p.channels_last), cached)
        names = p.splits.classes

        val = MultilabelScores(names)
        score("val", val)
        probabilities, targets = val.arrays()
        thresholds, fit = f1_thresholds(probabilities, targets), fit_fnr(probabilities, targets)
        path = Path(p.recipe.run_dir) / "model.json"
        atomic_write_json(path, {**json.loads(path.read_text(encoding="utf-8")), "thresholds": thresholds})
        store_fit(p.recipe.run_dir, KEY, asdict(fit), {})
        val.thresholds = thresholds
        metrics = split_metrics("val", val.result())
        if p.splits.test is not None:
            try:
                fit.threshold(DEFAULT_FNR)
                fnr = (fit, DEFAULT_FNR)
            except UserError as e:  # a validation split too small for the rate
                log.warning(f"no false-negative rate in metrics.json: {e}")
                fnr = None
            result = score("test", MultilabelScores(names, thresholds, fnr=fnr))
            metrics.update(split_metrics("test", result))
            if fnr is not None:
                metrics["test_fnr"] = result["fnr"]["fnr"]
                metrics["test_fnr_threshold"] = result["fnr"]["threshold"]
        return metrics

    # -- a finished run: the skeleton's steps --------------------------------------------------------------------
    def load_torch(self, run_dir: Path, info: MultilabelInfo) -> TrainedMultilabel:
        """The run's model, its outputs the labels' probabilities."""
        return load_pooled(self, run_dir, info, len(info.classes),
                           lambda backbone, head: TrainedMultilabel(backbone, head, info.channels_last))

    def eval_samples(self, recipe: MultilabelRecipe, source: Source, info: MultilabelInfo) -> Samples:
        """The data with its labels, read with the run's recipe and the run's labels."""
        return self.read_split(source, recipe, info.classes)

    def score_run(self, run, recipe, source, samples, model, info, options, *, batch_size, progress):
        """Fit the FNR control on the run's validation split if model.json has none (stored there), score the data
        at the run's thresholds and at --fnr, and draw the report."""
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        inputs = self.run_inputs(model, info)
        fit, fitted_now = stored_fnr(info), False
        if fit is None:
            check_writable(run.path, f"`sft eval` stores the FNR fit in {run.path / 'model.json'}; make the run "
                                     f"folder writable (chmod -R u+w {run.path}) or evaluate a writable copy of it")
            val = MultilabelScores(info.classes)
            score_batches(model, inputs.eval(self.load_splits(recipe).val), val, batch_size=batch_size,
                          collate_fn=inputs.collate, progress=progress, what="validation probabilities")
            fit, fitted_now = fit_fnr(*val.arrays()), True
            store_fit(run.path, KEY, asdict(fit), info.extra)
        alpha = options.fnr or DEFAULT_FNR
        try:
            fit.threshold(alpha)
            fnr = (fit, alpha)
        except UserError as e:  # a validation split too small for the rate: an error only when asked for
            if options.fnr is not None:
                raise
            log.warning(f"no false-negative rate in this evaluation: {e}")
            fnr = None
        scorer = MultilabelScores(info.classes, info.thresholds, worst=options.worst, fnr=fnr, fitted_now=fitted_now)
        scores = score_batches(model, inputs.eval(samples), scorer, batch_size=batch_size,
                               collate_fn=inputs.collate, progress=progress)
        for row in scores["worst"]:
            row["id"] = samples.ids[row["index"]]
        results = {"run_dir": str(run.path.resolve()), "data": data_identity(source, samples), "kind": samples.kind,
                   "classes": info.classes, "metrics": scores}
        return results, summarize(results), render(results, samples)

    def report_samples(self, recipe: MultilabelRecipe, source: Source, results: dict) -> Samples:
        """The evaluated samples again, with the run's labels."""
        return self.read_split(source, recipe, results["classes"])

    def predict(self, run_dir, inputs, options, stream=None):
        """`sft predict`; with --fnr, the run's FNR fit is checked before the model loads."""
        if options.fnr is not None:
            run_fnr(run_dir, self.run_info(Path(run_dir))).threshold(options.fnr)
        return super().predict(run_dir, inputs, options, stream)

    def predict_rows(self, model, info, inputs, options, folder, stream) -> list[dict]:
        """Each input's labels over their thresholds, most probable first, and their probabilities (both joined by
        '|')."""
        samples = prediction_samples(self, info, inputs, info.classes, len(info.classes))
        loaded = self.run_inputs(model, info)
        probabilities = torch.cat([predict_probabilities(model, x) for x, _ in
                                   DataLoader(loaded.eval(samples), batch_size=64, collate_fn=loaded.collate)])
        thresholds = thresholds_for("this run", info, options.fnr)
        rows = []
        for item, p in zip(inputs, probabilities):
            picked = chosen(p, info.classes, thresholds)
            rows.append({self.column: item, "labels": "|".join(n for n, _ in picked),
                         "probabilities": "|".join(f"{q:.4f}" for _, q in picked)})
        return rows

    def export(self, run_dir, out, options, *, force: bool, overwrite: bool) -> tuple:
        """`sft export --format onnx`: the graph gives each label's sigmoid probability; its parity with the PyTorch
        model is the largest probability difference, within sft.models.export's TOLERANCE. model.json keeps the
        run's thresholds (labels are those whose probability reaches theirs)."""
        folder, result = export_onnx(self, run_dir, out, force=force, overwrite=overwrite, terms=lambda info: {
            "scale": torch.ones(len(info.classes)), "output": "probabilities",
            "meaning": {"probabilities": f"sigmoid probability of each label {info.classes}; a label is predicted "
                                         f"where its probability reaches its entry of `thresholds`"}})
        result["figures"] = {"passed": result["passed"], "max |Δprobability|": f"{result['max_abs_diff']:.2e}",
                             "tolerance": f"{result['tolerance']:.0e}", "samples": result["samples"]}
        return folder, result

    def audit(self, recipe: MultilabelRecipe, out, *, overwrite, also):
        """`sft audit`: the train and val label sets an out-of-fold one-vs-rest probe on the cached features disagrees
        with, flagged and ranked by cleanlab (audit.py)."""
        if also:
            raise UserError("--also adds backbones to classification's probes; a multi-label audit probes the "
                            "recipe's own backbone")
        return audit_data(self, recipe, out, overwrite=overwrite)


class TextMultilabel(PooledTexts, ImageMultilabel):
    name = "text-multilabel"
    description = "several labels per text (or text pair): a new linear head on a pooled Hugging Face encoder"
    recipe = TextMultilabelRecipe
    onnx = OnnxPooledText
    serving = TextMultilabelPredictor

    def read_split(self, source: Source, recipe: MultilabelRecipe, classes: list[str] | None = None) -> Samples:
        d = recipe.data
        return read_multilabel(source.path, kind="text", format=source.format, column=d.text_column,
                               pair_column=d.text_pair_column, **self.label_options(recipe, classes))

    def loader_options(self, recipe: MultilabelRecipe, splits: Splits, inputs: Inputs, notes: dict) -> dict:
        return {"lengths": self.text_lengths(recipe, splits, inputs, notes)}


def split_metrics(split: str, result: dict) -> dict:
    """metrics.json's scores of a split: mAP (macro, micro), F1 (micro, macro), subset accuracy, and each label's AP
    and F1."""
    metrics = {f"{split}_{key}": result[key] for key in ("map_macro", "map_micro", "micro_f1", "macro_f1",
                                                         "subset_accuracy", "samples")}
    metrics[f"{split}_per_label"] = {n: {"ap": v["ap"], "f1": v["f1"]} for n, v in result["per_label"].items()}
    return metrics
