"""Split-conformal intervals: the stated coverage holds on synthetic data with heavy-tailed noise (over many draws,
never below it and not far above), the fit is stored in model.json and read back without the validation data, and a
validation split too small for a coverage is a clear error."""

import json

import numpy as np
import pytest
import torch

from sft.core.conformal import quantile_rank
from sft.errors import UserError
from sft.tasks.regression.intervals import KEY, IntervalCounts, IntervalFit, fit_intervals, fit_run, run_fit


def noisy(rng, n: int, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and targets whose residuals are Student-t (3 dof) noise, a different scale per column."""
    pred = torch.as_tensor(rng.normal(size=(n, k)))
    return pred, pred + torch.as_tensor(rng.standard_t(3, size=(n, k)) * np.arange(1, k + 1))


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_intervals_cover_as_stated_on_exchangeable_data(coverage):
    """Each column, marginally: the mean coverage over 200 calibration draws of n = 199 lies within
    [coverage, coverage + 1/(n + 1)] up to sampling error, and every single draw is close to it."""
    rng, n = np.random.default_rng(0), 199
    reached = []
    for _ in range(200):
        fit = fit_intervals(*noisy(rng, n))
        counts = IntervalCounts(fit, coverage)
        counts.update(*noisy(rng, 2000))
        reached.append([v["interval_coverage"] for v in counts.result(["a", "b"])["per_target"].values()])
    mean = np.mean(reached, axis=0)
    assert (mean >= coverage - 0.003).all() and (mean <= coverage + 1 / (n + 1) + 0.003).all(), mean
    assert np.abs(np.asarray(reached) - coverage).max() < 0.1


def test_the_half_width_is_the_finite_sample_quantile_of_the_residuals():
    pred = torch.zeros(9, 1)
    fit = fit_intervals(pred, torch.arange(9.0).view(-1, 1) - 4)  # |residuals| 4 3 2 1 0 1 2 3 4
    assert fit.residuals == [[0, 1, 1, 2, 2, 3, 3, 4, 4]]
    assert quantile_rank(9, 0.8) == 8 and fit.half_widths(0.8) == [4.0]  # ceil(10 * 0.8) = 8th smallest
    assert fit.half_widths(0.5) == [2.0]  # ceil(10 * 0.5) = 5th
    with pytest.raises(UserError, match="cannot be guaranteed from the run's 9 validation samples"):
        fit.half_widths(0.95)


def test_the_fit_is_stored_in_model_json_and_read_without_the_data(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"targets": ["a"], "extra": {}}))

    class Info:
        targets, extra = ["a"], {}

    info = Info()
    with pytest.raises(UserError, match="run `sft eval"):
        run_fit(tmp_path, info)
    calls = []

    def held_out():
        calls.append(1)
        return torch.zeros(20, 1), torch.arange(20.0).view(-1, 1)

    fit, now = fit_run(tmp_path, info, held_out)
    assert now and calls == [1] and json.loads((tmp_path / "model.json").read_text())["extra"][KEY] == {
        "residuals": [list(map(float, range(20)))]}
    again, now = fit_run(tmp_path, info, held_out)
    assert not now and calls == [1] and again == fit == run_fit(tmp_path, info)
    assert IntervalFit(**info.extra[KEY]).half_widths(0.9) == [18.0]  # ceil(21 * 0.9) = 19th smallest
