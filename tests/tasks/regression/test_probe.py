"""The ridge start of a regression head (exact, its penalty chosen on validation) and the split's scores."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from sft.tasks.pooled import new_head
from sft.tasks.regression.metrics import RegressionScores
from sft.tasks.regression.probe import PENALTIES, fit_ridge, load_ridge


def linear_data(rng, n: int, d: int, noise: float):
    w = rng.normal(size=(d, 2))
    x = rng.normal(size=(n, d))
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(x @ w + noise * rng.normal(size=(n, 2)),
                                                                    dtype=torch.float32)


def test_ridge_recovers_a_linear_target_and_the_head_gives_its_predictions():
    rng = np.random.default_rng(0)
    x, y = linear_data(rng, 400, 20, 0.01)
    fit = fit_ridge(x[:300], y[:300] + 3.0, x[300:], y[300:] + 3.0)
    assert fit.val_mae < 0.05 and fit.penalty == min(PENALTIES)  # no noise to shrink against: the weakest wins
    head = new_head(20, 2, 0.0)
    load_ridge(head, fit)
    with torch.no_grad():
        assert torch.allclose(head(x[300:]), y[300:] + 3.0, atol=0.05)


def test_the_penalty_is_chosen_on_validation_when_the_features_outnumber_the_samples():
    rng = np.random.default_rng(1)
    x, y = linear_data(rng, 260, 200, 5.0)
    fit = fit_ridge(x[:160], y[:160], x[160:], y[160:])
    weakest = fit_ridge(x[:160], y[:160], x[160:], y[160:], penalties=(min(PENALTIES),))
    assert fit.penalty > min(PENALTIES) and fit.val_mae < 0.9 * weakest.val_mae


def test_scores_per_column_in_the_targets_units():
    rng = np.random.default_rng(2)
    true = torch.as_tensor(rng.normal(size=(50, 2)) * [1.0, 100.0], dtype=torch.float32)
    pred = true + torch.as_tensor(rng.normal(size=(50, 2)), dtype=torch.float32)
    scores = RegressionScores(["a", "b"], [1.0, 100.0], worst=3)
    for first in range(0, 50, 16):
        scores.update(pred[first:first + 16], true[first:first + 16], first)
    result = scores.result()
    err = (pred - true).double().numpy()
    for j, name in enumerate("ab"):
        got = result["per_target"][name]
        t, p = true[:, j].double().numpy(), pred[:, j].double().numpy()
        assert got["mae"] == pytest.approx(np.abs(err[:, j]).mean(), rel=1e-5)
        assert got["rmse"] == pytest.approx(np.sqrt((err[:, j] ** 2).mean()), rel=1e-5)
        assert got["r2"] == pytest.approx(1 - (err[:, j] ** 2).sum() / ((t - t.mean()) ** 2).sum(), rel=1e-4)
        assert got["spearman"] == pytest.approx(spearmanr(p, t).statistic, rel=1e-4)
    assert result["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-5) and result["samples"] == 50
    worst = np.argsort(-np.abs(err / [1.0, 100.0]).max(1), kind="stable")[:3]
    assert [r["index"] for r in result["worst"]] == worst.tolist()  # the largest error in training std
    assert sum(result["residuals"][1]["counts"]) == 50
