"""The per-label thresholds (each label's F1-best on validation) and conformal risk control of the false-negative
rate on synthetic probabilities: the threshold is the largest whose bound (n/(n+1))·FNR + 1/(n+1) stays within α, and
on fresh samples from the same distribution the mean FNR stays within α."""

import numpy as np
import pytest
import torch

from sft.errors import UserError
from sft.tasks.multilabel.metrics import average_precisions, f1_thresholds, threshold_scores
from sft.tasks.multilabel.probe import fit_one_vs_rest
from sft.tasks.multilabel.risk import false_negative_rate, fit_fnr


def synthetic(n: int, seed: int, labels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy probabilities of 0/1 targets, every sample with at least one label."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, labels, generator=g) < 0.3).float()
    y[torch.arange(n), torch.randint(labels, (n,), generator=g)] = 1
    p = torch.sigmoid(2.5 * (2 * y - 1) + 1.5 * torch.randn(n, labels, generator=g))
    return p, y


def test_the_fnr_threshold_is_the_largest_within_the_bound_and_holds_on_new_samples():
    p, y = synthetic(400, 0)
    fit = fit_fnr(p, y)
    n, alpha = fit.n, 0.1
    t = fit.threshold(alpha)
    risk = lambda th: false_negative_rate(p, y, th)[0]  # noqa: E731
    assert n / (n + 1) * risk(t) + 1 / (n + 1) <= alpha + 1e-9
    higher = min(s for s in fit.scores if s > t)  # the next candidate up breaks the bound
    assert n / (n + 1) * risk(higher) + 1 / (n + 1) > alpha
    # the guarantee is on the expectation over calibration and test draws: fresh pairs of both
    achieved = [false_negative_rate(*synthetic(400, 2 * k + 1), fit_fnr(*synthetic(200, 2 * k + 2)).threshold(alpha))[0]
                for k in range(40)]
    assert np.mean(achieved) <= alpha + 0.005 and np.mean(achieved) > alpha - 0.03  # not far below: not trivial
    assert fit.threshold(0.3) > t  # a looser rate keeps a higher threshold
    with pytest.raises(UserError, match="cannot be guaranteed from the run's 5 labelled validation samples"):
        fit_fnr(p[:5], y[:5]).threshold(0.1)


def test_f1_thresholds_beat_one_half_on_their_split_and_the_scores_add_up():
    p, y = synthetic(300, 1)
    p = p ** 3  # miscalibrated: 0.5 is far from the best threshold
    tuned = f1_thresholds(p, y)
    assert threshold_scores(p, y, tuned)["macro_f1"] > threshold_scores(p, y, [0.5] * 5)["macro_f1"]
    for j, t in enumerate(tuned):  # no other threshold of this label does better
        f1 = lambda th: threshold_scores(p[:, j:j + 1], y[:, j:j + 1], [th])["macro_f1"]  # noqa: E731
        assert f1(t) >= max(f1(float(c)) for c in p[:, j]) - 1e-12
    perfect = threshold_scores(y, y, [0.5] * 5)
    assert perfect["micro_f1"] == perfect["macro_f1"] == perfect["subset_accuracy"] == 1.0
    ap = average_precisions(p, torch.cat([y[:, :4], torch.zeros(300, 1)], 1))
    assert ap["per_label"][4] is None and ap["macro"] == pytest.approx(np.mean(ap["per_label"][:4]))


def test_the_one_vs_rest_probe_fits_separable_labels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = torch.stack([(x[:, 0] > 0), (x[:, 1] + x[:, 2] > 0.5), (x[:, 3] < -0.5)], 1).float()
    fit = fit_one_vs_rest(x[:150], y[:150], x[150:], y[150:])
    assert fit.val_map > 0.95 and fit.weight.shape == (3, 8) and fit.facts()["seconds"] >= 0
