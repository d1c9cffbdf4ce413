"""Image and text multi-label end to end: `sft train` tunes each label's threshold and fits the FNR control on the
validation split (both in model.json), `sft eval` scores the same model with the report, `sft predict` gives the
labels over the stored thresholds (or the conformal one with --fnr), `sft report` redraws the page."""

import json
import shutil

import pytest

from tests.conftest import sft


def metrics_of(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_an_image_run_trains_evaluates_and_predicts_at_its_thresholds(tiny_multilabel_run, mosaics):
    run = tiny_multilabel_run
    metrics, info = metrics_of(run), json.loads((run / "model.json").read_text())
    assert metrics["probe"]["seconds"] >= 0 and metrics["val_samples"] == 60 and metrics["test_samples"] == 40
    assert {"val_map", "test_map_macro", "test_map_micro", "test_micro_f1", "test_subset_accuracy",
            "test_fnr"} <= set(metrics)
    assert info["task"] == "image-multilabel" and len(info["classes"]) == len(info["thresholds"]) >= 8
    assert info["thresholds"] != [0.5] * len(info["classes"])  # tuned on val
    assert info["extra"]["fnr"]["n"] == 60

    result = sft("eval", run, "--data", mosaics / "val.csv", "--fnr", "0.2")
    assert result.exit_code == 0, result.output
    evaluation = metrics_of(run / "eval-val")
    assert evaluation["map_macro"] == pytest.approx(metrics["val_map"], abs=1e-4)  # the best checkpoint is the model
    assert evaluation["micro_f1"] == pytest.approx(metrics["val_micro_f1"], abs=1e-6)
    assert evaluation["fnr_target"] == 0.2 and evaluation["fnr"] <= 0.2  # its own calibration data
    page = (run / "eval-val" / "report.html").read_text()
    for section in ("summary", "per-label", "fnr", "curves", "worst"):
        assert f'id="{section}"' in page
    assert page.count("<img") == 1 + 16

    results = json.loads((run / "eval-val" / "results.json").read_text())["metrics"]
    worst = results["worst"][:2]
    files = [str(mosaics / "val" / f"{int(r['id'].rsplit(':', 1)[1]) - 2:05d}.png") for r in worst]
    result = sft("predict", run, *files, "--format", "json")
    assert result.exit_code == 0, result.output
    for row, r in zip(json.loads(result.output), worst):
        assert set(filter(None, row["labels"].split("|"))) == set(r["pred"])
        probs = [float(q) for q in row["probabilities"].split("|") if q]
        assert all(p >= info["thresholds"][info["classes"].index(n)] for n, p in zip(row["labels"].split("|"), probs))
    result = sft("predict", run, *files, "--fnr", "0.2", "--format", "json")
    assert result.exit_code == 0, result.output
    threshold = json.loads((run / "eval-val" / "metrics.json").read_text())["threshold"]
    for row, r in zip(json.loads(result.output), worst):
        got = set(filter(None, row["labels"].split("|")))  # the stored probabilities are rounded to 4 digits
        assert {n for n, p in zip(info["classes"], r["probabilities"]) if p > threshold + 1e-4} <= got
        assert got <= {n for n, p in zip(info["classes"], r["probabilities"]) if p >= threshold - 1e-4}
    (run / "eval-val" / "report.html").unlink()
    assert sft("report", run, "--eval", run / "eval-val").exit_code == 0
    assert 'id="worst"' in (run / "eval-val" / "report.html").read_text()


def test_without_an_fnr_fit_predict_says_how_to_make_one_and_eval_makes_it(tiny_multilabel_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_multilabel_run, run, ignore=shutil.ignore_patterns("eval*", "export*"))
    info = json.loads((run / "model.json").read_text())
    fitted = info["extra"].pop("fnr")
    (run / "model.json").write_text(json.dumps(info))
    result = sft("predict", run, tmp_path / "none.png", "--fnr", "0.1")
    assert result.exit_code == 2 and "run `sft eval" in " ".join(result.output.split())
    result = sft("eval", run, "--worst", "0")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "eval" / "results.json").read_text())["metrics"]["fnr"]["fitted_now"]
    stored = json.loads((run / "model.json").read_text())["extra"]["fnr"]
    assert stored["n"] == fitted["n"] and stored["scores"] == pytest.approx(fitted["scores"], abs=1e-4)
    assert metrics_of(run / "eval")["map_macro"] == pytest.approx(metrics_of(run)["test_map_macro"], abs=1e-4)


def test_a_text_run_with_binary_columns_trains_and_predicts(tiny_text_multilabel_run):
    run = tiny_text_multilabel_run
    metrics = metrics_of(run)
    assert set(metrics["test_per_label"]) == {"long", "the"} and metrics["probe"]["l2"] > 0
    result = sft("predict", run, "--text", "The cat sat on the mat", "--text", "Ok", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[0] == "text,labels,probabilities"
