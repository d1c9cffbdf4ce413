"""Temperature scaling: recovers a known over-confidence, lowers ECE and NLL, and is stored in model.json."""

import json

import pytest
import torch

from sft.tasks.classification.calibration import ece, fit_temperature, nll, set_temperature
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
