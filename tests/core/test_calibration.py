"""Temperature scaling: recovers a known over-confidence, lowers ECE and NLL, and is stored in model.json."""

import json

import pytest
import torch

from sft.core.calibration import ece, fit_temperature, nll, set_temperature
from sft.errors import UserError


def calibrated_logits(n=4000, c=5, seed=0):
    """Logits whose softmax is the true class distribution: labels are drawn from it."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 1.5
    labels = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)
    return logits, labels


def test_fit_recovers_overconfidence_and_lowers_ece():
    logits, labels = calibrated_logits()
    overconfident = logits * 4.0  # the same predictions, four times too sharp
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(4.0, rel=0.15)
    assert ece(overconfident, labels, t) < 0.5 * ece(overconfident, labels)
    assert nll(overconfident, labels, t) < nll(overconfident, labels)
    assert (overconfident / t).argmax(-1).equal(overconfident.argmax(-1))  # predictions never change


def test_fit_on_calibrated_logits_stays_near_one():
    logits, labels = calibrated_logits(seed=1)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(1.0, abs=0.15)
    assert ece(logits, labels, t) <= ece(logits, labels) + 0.01


def test_fit_works_inside_inference_mode():
    logits, labels = calibrated_logits(n=500)
    with torch.inference_mode():
        sharp = logits * 3
        assert fit_temperature(sharp, labels) > 1.5


def test_set_temperature_updates_model_json(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"backbone": "b", "temperature": 1.0, "extra": {"k": 1}}))
    set_temperature(tmp_path, 2.5, {"val_samples": 10})
    raw = json.loads((tmp_path / "model.json").read_text())
    assert raw["temperature"] == 2.5 and raw["backbone"] == "b"
    assert raw["extra"] == {"k": 1, "temperature_fitted": {"val_samples": 10}}
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temporary file left behind
    with pytest.raises(UserError, match="no model.json"):
        set_temperature(tmp_path / "missing", 2.0, {})


def test_the_ece_is_torchmetrics_l1_calibration_error():
    """One ECE for every task: the reliability bins give torchmetrics' CalibrationError(norm="l1")."""
    import torchmetrics.functional as tmf
    logits, labels = calibrated_logits(n=2000, c=4, seed=3)
    logits = logits * 2.5
    expected = float(tmf.calibration_error(logits.softmax(-1), labels, task="multiclass", num_classes=4, n_bins=15))
    assert abs(ece(logits, labels) - expected) < 1e-6


def test_calibrate_run_fits_once_and_stores_it(tmp_path):
    from sft.core.calibration import calibrate_run
    (tmp_path / "model.json").write_text(json.dumps({"temperature": 1.0}))
    logits, labels = calibrated_logits()
    calls = []

    def held_out():
        calls.append(1)
        return logits * 3, labels, {"val_samples": len(labels)}

    first = calibrate_run(tmp_path, held_out)
    assert first["fitted_now"] and first["temperature"] > 2 and first["val_ece_after"] < first["val_ece_before"]
    again = calibrate_run(tmp_path, held_out)
    assert not again["fitted_now"] and again["temperature"] == first["temperature"] and len(calls) == 1
    assert calibrate_run(tmp_path, lambda: None, refit=True)["note"] == "no validation split: not scaled"
