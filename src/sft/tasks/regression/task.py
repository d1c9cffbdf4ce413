"""Regression of images and texts behind the Task protocol: one number or several per sample (a score, an angle, a
count, an age), a new linear head on the backbone's pooled vector trained on standardised targets, val_mae monitored,
head-only epochs on cached features started from a ridge regression fitted on them, split-conformal prediction
intervals fitted on the validation split, and the after-training skeleton's steps (scores in the targets' units with
a report, predictions with intervals, ONNX export, `sft serve`). The backbones, inputs, model files and exports are
those every pooled-vector task shares (sft.tasks.pooled); images and texts differ only there
and in how a manifest row names its input."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

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
from sft.tasks.pooled import (OnnxPooled, OnnxPooledText, PooledImages, PooledTask, PooledTexts, export_onnx,
                              load_pooled, prediction_samples, split_scorer)
from sft.tasks.regression.audit import audit_data
from sft.tasks.regression.data import read_targets, target_scale
from sft.tasks.regression.intervals import KEY, IntervalCounts, fit_intervals, fit_run, run_fit
from sft.tasks.regression.metrics import RegressionScores, summarize
from sft.tasks.regression.module import Regressor, TrainedRegressor
from sft.tasks.regression.options import DEFAULT_COVERAGE, OPTIONS
from sft.tasks.regression.probe import fit_ridge, load_ridge
from sft.tasks.regression.recipe import ImageRegressionRecipe, RegressionRecipe, TextRegressionRecipe
from sft.tasks.regression.report import render
from sft.tasks.regression.serving import (ImageRegressionPredictor, TextRegressionPredictor, predict_values,
                                          value_columns)
from sft.training.optim import is_transformer
from sft.training.prepare import Prepared
from sft.training.trainer import Monitor

log = logging.getLogger("sft")


@dataclass
class RegressionInfo:
    """Everything needed to rebuild and feed the trained model without the training data or the original weights
    (model.json)."""
    backbone: str
    targets: list[str]  # the target columns, one head output each
    num_features: int
    preprocess: Preprocess | TextPreprocess
    mean: list[float]  # outputs are head(x) * std + mean: the training split's (0 and 1 when not standardised)
    std: list[float]
    scale: list[float]  # each target's standard deviation on the training split: the unit of the parity check
    dropout: float = 0.0
    channels_last: bool = False
    task: str = "image-regression"
    lora: dict | None = None  # the strategy section of a lora run: rebuilds the same adapters
    extra: dict = field(default_factory=dict)  # extra["intervals"]: the conformal fit


class ImageRegression(PooledImages, PooledTask):
    name = "image-regression"
    description = "one number or several per image: a new linear head on a pretrained timm/torchvision backbone"
    recipe = ImageRegressionRecipe
    monitor = Monitor("val_mae", "min")
    options = OPTIONS
    info_type = RegressionInfo  # model.json
    onnx = OnnxPooled  # `sft export --format onnx` and `--engine onnx`
    serving = ImageRegressionPredictor  # `sft serve`
    render = staticmethod(render)  # report.html

    # -- data and model ------------------------------------------------------------------------------------------
    def read_split(self, source: Source, recipe: RegressionRecipe) -> Samples:
        d = recipe.data
        return read_targets(source.path, kind="image", format=source.format, target_columns=d.target_columns,
                            column=d.path_column)

    def load_splits(self, recipe: RegressionRecipe) -> Splits:
        """Train, val (a seeded share of train in quantile bins of the first target, when data.val is absent) and
        test, every row checked."""
        return load_splits(recipe.data, recipe.seed, lambda source, names: self.read_split(source, recipe))

    # -- training ------------------------------------------------------------------------------------------------
    def build_module(self, recipe, backbone, splits, schedule, channels_last) -> Regressor:
        return Regressor(backbone, splits, schedule, recipe, channels_last)

    def start_head(self, recipe: RegressionRecipe, model: Regressor, splits: Splits, features) -> dict | None:
        """A ridge regression on the cached features (penalty chosen on val) as the head's start, when
        strategy.head_init asks for it (auto: linear-probe runs and transformer backbones)."""
        init = recipe.strategy.head_init
        if init == "random" or (init == "auto" and recipe.strategy.name != "linear-probe"
                                and not is_transformer(model.backbone)):
            return None
        z = {split: (getattr(splits, split).target_tensor() - model.mean) / model.std for split in ("train", "val")}
        fit = fit_ridge(features("train"), z["train"], features("val"), z["val"])
        load_ridge(model.head, fit)
        return {"ridge": fit.facts()}

    def write_model(self, run: RunDir, p: Prepared) -> None:
        """The run's model files: the backbone's own (texts), then model.safetensors and model.json."""
        r = p.recipe
        info = RegressionInfo(backbone=p.backbone.name, targets=p.splits.classes, num_features=p.backbone.num_features,
                              preprocess=self.trained_preprocess(p), mean=p.model.mean.tolist(),
                              std=p.model.std.tolist(), scale=target_scale(p.splits.train.targets),
                              dropout=r.model.dropout, channels_last=p.channels_last, task=self.name,
                              lora=r.strategy.model_dump() if r.strategy.name == "lora" else None)
        self.write_backbone(run, p.model, info)
        write_model_files(run.path, p.model, info)

    def final_metrics(self, p: Prepared, cached: bool) -> dict:
        """Validation and test scores of the best model in the targets' units, as `sft eval` and `predict` see it (in
        fp32); the intervals fitted on the validation residuals and stored in model.json, and their coverage at
        DEFAULT_COVERAGE on the test split."""
        m = p.model
        score = split_scorer(p, TrainedRegressor(m.backbone, m.head, m.mean, m.std, p.channels_last), cached)
        scale = target_scale(p.splits.train.targets)

        val = RegressionScores(p.splits.classes, scale)
        metrics = split_metrics("val", score("val", val))
        metrics.pop("val_mae")  # the monitored value stays the one the best checkpoint was chosen by
        fit = fit_intervals(*val.arrays())
        store_fit(p.recipe.run_dir, KEY, {"residuals": fit.residuals}, {})
        if p.splits.test is not None:
            try:
                intervals = IntervalCounts(fit, DEFAULT_COVERAGE)
            except UserError as e:  # a validation split too small for the coverage
                log.warning(f"no interval coverage in metrics.json: {e}")
                intervals = None
            result = score("test", RegressionScores(p.splits.classes, scale, intervals=intervals))
            metrics.update(split_metrics("test", result))
            if intervals is not None:
                metrics["test_interval_coverage"] = result["intervals"]["interval_coverage"]
                metrics["test_interval_width"] = result["intervals"]["mean_interval_width"]
        return metrics

    # -- a finished run: the skeleton's steps --------------------------------------------------------------------
    def load_torch(self, run_dir: Path, info: RegressionInfo) -> TrainedRegressor:
        """The run's model, its outputs in the targets' units."""
        return load_pooled(self, run_dir, info, len(info.targets), lambda backbone, head: TrainedRegressor(
            backbone, head, info.mean, info.std, info.channels_last))

    def eval_samples(self, recipe: RegressionRecipe, source: Source, info: RegressionInfo) -> Samples:
        """The data with its targets, read with the run's recipe (its columns)."""
        return self.read_split(source, recipe)

    def score_run(self, run, recipe, source, samples, model, info, options, *, batch_size, progress):
        """Fit the intervals on the run's validation split if model.json has none (stored there), score the data
        with them at --coverage, and draw the report."""
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        inputs = self.run_inputs(model, info)

        def held_out() -> tuple[torch.Tensor, torch.Tensor]:
            val = RegressionScores(info.targets)
            score_batches(model, inputs.eval(self.load_splits(recipe).val), val, batch_size=batch_size,
                          collate_fn=inputs.collate, progress=progress, what="validation residuals")
            return val.arrays()

        fit, fitted_now = fit_run(run.path, info, held_out)
        try:
            intervals = IntervalCounts(fit, options.coverage or DEFAULT_COVERAGE, fitted_now)
        except UserError as e:  # a validation split too small for the coverage: an error only when asked for
            if options.coverage is not None:
                raise
            log.warning(f"no prediction intervals in this evaluation: {e}")
            intervals = None
        scorer = RegressionScores(info.targets, info.scale, worst=options.worst, intervals=intervals)
        scores = score_batches(model, inputs.eval(samples), scorer, batch_size=batch_size,
                               collate_fn=inputs.collate, progress=progress)
        for row in scores["worst"]:
            row["id"] = samples.ids[row["index"]]
        results = {"run_dir": str(run.path.resolve()), "data": data_identity(source, samples), "kind": samples.kind,
                   "targets": info.targets, "metrics": scores}
        return results, summarize(results), render(results, samples)

    def evaluate(self, run_dir, data, out, options, *, overwrite, batch_size, progress):
        """`sft eval` as the skeleton runs it; printed without the per-target table when there is one target."""
        out, summary = super().evaluate(run_dir, data, out, options, overwrite=overwrite, batch_size=batch_size,
                                        progress=progress)
        return out, summary if len(summary["per_target"]) > 1 else {k: v for k, v in summary.items()
                                                                     if k != "per_target"}

    def predict(self, run_dir, inputs, options, stream=None):
        """`sft predict`; with --coverage, the run's interval fit is checked before the model loads."""
        if options.coverage is not None:
            run_fit(run_dir, self.run_info(Path(run_dir))).half_widths(options.coverage)
        return super().predict(run_dir, inputs, options, stream)

    def predict_rows(self, model, info, inputs, options, folder, stream) -> list[dict]:
        """Each input's value per target column in the targets' units; with a coverage, each column's interval
        (`<target>_low`, `<target>_high`)."""
        samples = prediction_samples(self, info, inputs, info.targets, len(info.targets))
        loaded = self.run_inputs(model, info)
        values = torch.cat([predict_values(model, x) for x, _ in
                            DataLoader(loaded.eval(samples), batch_size=64, collate_fn=loaded.collate)])
        half = run_fit("this run", info).half_widths(options.coverage) if options.coverage is not None else None
        return [{self.column: item, **value_columns(v, info.targets, half)} for item, v in zip(inputs, values)]

    def export(self, run_dir, out, options, *, force: bool, overwrite: bool) -> tuple:
        """`sft export --format onnx`: the graph gives the targets' units; its parity with the PyTorch model is the
        largest output difference in training standard deviations of each target, within sft.models.export's
        TOLERANCE (1e-4: float32 kernels differ by about 1e-7 there)."""
        folder, result = export_onnx(self, run_dir, out, force=force, overwrite=overwrite, terms=lambda info: {
            "scale": torch.tensor(info.scale, dtype=torch.float32), "output": "values",
            "meaning": {"values": f"the targets {info.targets} in their own units, one column each"}})
        result["figures"] = {"passed": result["passed"], "max |Δoutput| (target std)": f"{result['max_abs_diff']:.2e}",
                             "tolerance": f"{result['tolerance']:.0e}", "samples": result["samples"]}
        return folder, result

    def audit(self, recipe: RegressionRecipe, out, *, overwrite, also):
        """`sft audit`: the train and val targets an out-of-fold ridge probe on the cached features disagrees with
        most, rated by cleanlab (audit.py)."""
        if also:
            raise UserError("--also adds backbones to classification's probes; a regression audit probes the "
                            "recipe's own backbone")
        return audit_data(self, recipe, out, overwrite=overwrite)



class TextRegression(PooledTexts, ImageRegression):
    name = "text-regression"
    description = "one number or several per text (or text pair): a new linear head on a pooled Hugging Face encoder"
    recipe = TextRegressionRecipe
    onnx = OnnxPooledText
    serving = TextRegressionPredictor

    def read_split(self, source: Source, recipe: RegressionRecipe) -> Samples:
        d = recipe.data
        return read_targets(source.path, kind="text", format=source.format, target_columns=d.target_columns,
                            column=d.text_column, pair_column=d.text_pair_column)

    def loader_options(self, recipe: RegressionRecipe, splits: Splits, inputs: Inputs, notes: dict) -> dict:
        return {"lengths": self.text_lengths(recipe, splits, inputs, notes)}


def split_metrics(split: str, result: dict) -> dict:
    """metrics.json's scores of a split: MAE, RMSE, R², Spearman (means over the target columns), and each column's
    when there are several."""
    metrics = {f"{split}_{key}": result[key] for key in ("mae", "rmse", "r2", "spearman", "samples")}
    if len(result["per_target"]) > 1:
        metrics[f"{split}_per_target"] = result["per_target"]
    return metrics
