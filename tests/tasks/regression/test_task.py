"""Image and text regression end to end: `sft train` scores the best model in the targets' units and fits the
intervals, `sft eval` scores the same model (its validation MAE is the monitored one) with the stated coverage and
draws the report, `sft predict` gives the values and intervals the evaluation counted, `sft report` redraws the page;
a run without an interval fit says how to make one, and `sft eval` makes it."""

import json
import re
import shutil

import numpy as np
import pytest

from sft.core.conformal import quantile_rank
from tests.conftest import sft


def metrics_of(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_an_image_run_trains_evaluates_and_predicts_in_the_targets_units(tiny_regression_run, angles, tmp_path):
    run = tiny_regression_run
    metrics, info = metrics_of(run), json.loads((run / "model.json").read_text())
    assert metrics["ridge"]["seconds"] >= 0 and metrics["val_samples"] == 60 and metrics["test_samples"] == 60
    assert {"test_mae", "test_rmse", "test_r2", "test_spearman", "test_interval_coverage"} <= set(metrics)
    assert info["targets"] == ["angle"] and info["task"] == "image-regression"
    train = np.loadtxt(angles / "train.csv", delimiter=",", skiprows=1, usecols=1)
    assert info["mean"] == pytest.approx([train.mean()], rel=1e-5) and info["std"] == pytest.approx([train.std()])
    residuals = info["extra"]["intervals"]["residuals"][0]
    assert len(residuals) == 60 and residuals == sorted(residuals)

    result = sft("eval", run, "--data", angles / "val.csv", "--coverage", "0.9")
    assert result.exit_code == 0, result.output
    evaluation = metrics_of(run / "eval-val")
    assert evaluation["mae"] == pytest.approx(metrics["val_mae"], rel=1e-4)  # the best checkpoint is the model
    assert evaluation["rmse"] == pytest.approx(metrics["val_rmse"], rel=1e-4)
    k = quantile_rank(60, 0.9)
    assert evaluation["interval_coverage"] >= k / 60  # its own calibration data: at least k of the 60 residuals
    assert evaluation["mean_interval_width"] == pytest.approx(2 * residuals[k - 1])
    page = (run / "eval-val" / "report.html").read_text()
    for section in ("summary", "per-target", "intervals", "scatter", "residuals", "worst"):
        assert f'id="{section}"' in page
    assert page.count("<img") == 2 + 16 and f"{angles / 'val.csv'}:" in page  # figures, then 16 thumbnails

    worst = json.loads((run / "eval-val" / "results.json").read_text())["metrics"]["worst"][:2]
    files = [str(angles / "val" / f"{int(r['id'].rsplit(':', 1)[1]) - 2:05d}.png") for r in worst]
    result = sft("predict", run, *files, "--coverage", "0.9", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    for row, r, file in zip(rows, worst, files):
        assert row["file"] == file and row["angle"] == pytest.approx(r["pred"][0], abs=1e-3)
        assert row["angle_high"] - row["angle"] == pytest.approx(residuals[k - 1], abs=1e-3)
        assert row["angle"] - row["angle_low"] == pytest.approx(residuals[k - 1], abs=1e-3)
    (run / "eval-val" / "report.html").unlink()
    assert sft("report", run, "--eval", run / "eval-val").exit_code == 0
    assert 'id="worst"' in (run / "eval-val" / "report.html").read_text()


def test_without_an_interval_fit_predict_says_how_to_make_one_and_eval_makes_it(tiny_regression_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_regression_run, run, ignore=shutil.ignore_patterns("eval*", "export*"))
    info = json.loads((run / "model.json").read_text())
    fitted = info["extra"].pop("intervals")
    (run / "model.json").write_text(json.dumps(info))
    result = sft("predict", run, tmp_path / "none.png", "--coverage", "0.9")
    assert result.exit_code == 2 and "run `sft eval" in " ".join(result.output.split())
    result = sft("eval", run, "--coverage", "0.8", "--worst", "0")
    assert result.exit_code == 0, result.output
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["metrics"]["intervals"]["fitted_now"] and results["data"]["samples"] == 60
    stored = json.loads((run / "model.json").read_text())["extra"]["intervals"]
    assert stored["residuals"][0] == pytest.approx(fitted["residuals"][0], abs=1e-4)  # the same val residuals
    assert metrics_of(run / "eval")["coverage_target"] == 0.8
    assert metrics_of(run / "eval")["mae"] == pytest.approx(metrics_of(run)["test_mae"], rel=1e-4)


def test_a_text_run_predicts_two_targets(tiny_text_regression_run, quote_lengths):
    run = tiny_text_regression_run
    metrics = metrics_of(run)
    assert set(metrics["val_per_target"]) == set(metrics["test_per_target"]) == {"words", "letters"}
    assert np.isfinite(metrics["test_mae"]) and metrics["test_interval_coverage"] > 0
    result = sft("eval", run)
    assert result.exit_code == 0, result.output
    evaluation = metrics_of(run / "eval")
    assert evaluation["mae"] == pytest.approx(metrics["test_mae"], rel=1e-4)
    assert set(evaluation["per_target"]["words"]) >= {"mae", "rmse", "r2", "spearman", "interval_coverage"}
    assert "<img" in (run / "eval" / "report.html").read_text() and "<p>" in (run / "eval" / "report.html").read_text()
    result = sft("predict", run, "--text", "The cat sat on the mat", "--text", "Ok", "--coverage", "0.5",
                 "--format", "csv")
    assert result.exit_code == 0, result.output
    header, *rows = result.output.strip().splitlines()
    assert header == "text,words,words_low,words_high,letters,letters_low,letters_high" and len(rows) == 2
    assert all(float(r.split(",")[2]) < float(r.split(",")[1]) < float(r.split(",")[3]) for r in rows)
    assert re.match(r"The cat sat on the mat,-?\d", rows[0])
