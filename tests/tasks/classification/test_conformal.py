"""Prediction sets (split conformal APS/RAPS): the coverage guarantee on exchangeable synthetic data, to within the
sampling error and with the finite-sample rank (a plain quantile would miss it), nested sets that grow with the
coverage, the validation split too small for a coverage, the fit stored once in model.json; then `sft eval`,
`sft predict --coverage` on a tiny real run."""

import json
import math
import shutil

import pytest
import torch

from sft.errors import UserError
from sft.tasks.classification.conformal import (KEY, SetFit, class_scores, fit_run, fit_sets, quantile_rank,
                                                run_fit, set_rows)
from tests.conftest import sft


@pytest.fixture(scope="module")
def pool():
    """10,000 exchangeable samples of 10 classes whose labels are drawn from their own (calibrated) probabilities."""
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(10_000, 10, generator=g) * 2).softmax(-1)
    labels = torch.multinomial(probs, 1, generator=g)[:, 0]
    return probs, labels


def split_coverage(probs, labels, n, coverage, reps, penalty=0.0, seed=1):
    """Mean coverage over `reps` random splits: fit on n samples, measure on the rest."""
    g = torch.Generator().manual_seed(seed)
    scores = class_scores(probs, penalty, 2)  # every sample's score for every class, once
    true = scores.gather(-1, labels[:, None])[:, 0]
    covered = []
    for _ in range(reps):
        perm = torch.randperm(len(labels), generator=g)
        fit = fit_sets(probs[perm[:n]], labels[perm[:n]], penalty=penalty, k_reg=2)
        covered.append(float((true[perm[n:]] <= fit.threshold(coverage)).float().mean()))
    return sum(covered) / reps


@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_coverage_on_exchangeable_data_is_the_finite_sample_guarantee(pool, coverage):
    probs, labels = pool
    n, reps = 45, 1000
    k = quantile_rank(n, coverage)
    expected = k / (n + 1)  # E[coverage] of the k-th smallest of n continuous scores
    var = k * (n + 1 - k) / ((n + 1) ** 2 * (n + 2)) + coverage * (1 - coverage) / (len(labels) - n)
    tolerance = 4 * math.sqrt(var / reps)  # the coverage of one split is Beta(k, n + 1 - k), plus the test's binomial
    assert expected >= coverage
    assert abs(split_coverage(probs, labels, n, coverage, reps) - expected) < tolerance
    naive = math.ceil(n * coverage) / (n + 1)  # np.quantile's rank: it under-covers, and this test would see it
    assert naive < coverage and expected - naive > tolerance


def test_raps_keeps_the_guarantee_and_cuts_the_largest_sets(pool):
    probs, labels = pool
    assert abs(split_coverage(probs, labels, 500, 0.9, 40, penalty=0.05) - 0.9) < 0.01
    aps, raps = fit_sets(probs[:500], labels[:500]), fit_sets(probs[:500], labels[:500], penalty=0.05, k_reg=2)
    sizes = {name: fit.sets(probs[500:], 0.9).sum(-1).float() for name, fit in (("aps", aps), ("raps", raps))}
    assert sizes["raps"].max() < sizes["aps"].max() and sizes["raps"].std() < sizes["aps"].std() / 2


def test_sets_are_nested_never_empty_and_grow_with_coverage(pool):
    probs, labels = pool
    fit = fit_sets(probs[:1000], labels[:1000])
    test = probs[1000:3000]
    previous = torch.zeros(len(test), 10, dtype=torch.bool)
    for coverage in (0.3, 0.8, 0.9, 0.95, 0.99):
        inside = fit.sets(test, coverage)
        assert (inside | ~previous).all()  # every smaller coverage's set is inside this one
        assert inside[torch.arange(len(test)), test.argmax(-1)].all()  # the top class, so never empty
        assert inside.sum() > previous.sum()
        previous = inside
    letters = list("abcdefghij")
    for fitted in (fit, fit_sets(probs[:1000], labels[:1000], penalty=0.05, k_reg=2)):
        names, inside = set_rows(test, fitted, 0.9, letters), fitted.sets(test, 0.9)
        assert [set(row) for row in names] == [{letters[c] for c in m.nonzero()[:, 0].tolist()} for m in inside]
        assert [row[0] for row in names] == [letters[i] for i in test.argmax(-1)]  # most probable first


def test_a_threshold_of_all_the_mass_holds_every_class():
    """float32 probabilities sum to 1 ± 1e-7: the last class's mass must not fall outside a threshold of 1."""
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(1000, 7, generator=g) * 3).softmax(-1)
    assert (probs.double().sum(-1) > 1).any()  # what would push it out
    fit = fit_sets(probs[:20], probs[:20].argmin(-1))  # every true class ranked last: the scores are all 1
    assert fit.threshold(0.9) == 1.0 and fit.sets(probs[20:], 0.9).all()


def test_the_finite_sample_rank_and_a_validation_split_too_small():
    fit = SetFit([0.1 * i for i in range(1, 10)])  # n = 9
    assert quantile_rank(9, 0.9) == 9 and fit.threshold(0.9) == pytest.approx(0.9)  # 10 * 0.9 in floats is not 9
    assert quantile_rank(9, 0.5) == 5 and fit.threshold(0.5) == pytest.approx(0.5)
    assert quantile_rank(9, 0.01) == 1
    with pytest.raises(UserError, match=r"run's 9 validation samples \(it needs at least 11; 9 guarantee at most "
                                        r"0\.9000\)"):
        fit.threshold(0.91)


def test_the_fit_is_stored_once_and_refit_for_another_penalty_or_temperature(tmp_path, pool):
    probs, labels = pool
    (tmp_path / "model.json").write_text(json.dumps({"classes": list("abcdefghij"), "temperature": 1.5,
                                                     "extra": {"temperature_fitted": {"temperature": 1.5}}}))
    info = type("Info", (), {"temperature": 1.5, "extra": {}})()
    calls = []

    def held_out():
        calls.append(1)
        return probs[:200].log(), labels[:200], {"val_samples": 200}

    fit, now = fit_run(tmp_path, info, held_out)
    stored = json.loads((tmp_path / "model.json").read_text())
    assert now and len(calls) == 1 and stored["extra"][KEY] == info.extra[KEY]
    assert stored["extra"]["temperature_fitted"] == {"temperature": 1.5} and len(stored["extra"][KEY]["scores"]) == 200
    assert fit.scores == sorted(fit.scores) and fit.temperature == 1.5
    assert fit_run(tmp_path, info, held_out) == (fit, False) and len(calls) == 1  # reused
    assert run_fit(tmp_path, info) == fit
    assert fit_run(tmp_path, info, held_out, penalty=0.01)[1] and len(calls) == 2  # another method: refitted
    info.temperature = 2.0  # a temperature fitted again: the stored scores no longer hold
    with pytest.raises(UserError, match=f"`sft eval {tmp_path}` once"):
        run_fit(tmp_path, info)


def test_eval_predict_and_their_errors_on_a_real_run(tiny_image_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_image_run, run, ignore=shutil.ignore_patterns("export*", "eval*"))
    image = tmp_path / "a.png"
    from PIL import Image
    Image.new("RGB", (28, 28), (200, 200, 200)).save(image)

    refused = sft("predict", run, image, "--coverage", "0.9")  # not evaluated yet: no fit
    assert refused.exit_code == 2 and f"sft eval {run}" in " ".join(refused.output.split())
    assert sft("eval", run, "--coverage", "1.5").exit_code == 2

    assert sft("eval", run, "--top-losses", "0").exit_code == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["coverage_target"] == 0.9 and 1 <= metrics["mean_set_size"] <= 4
    assert metrics["set_coverage"] >= metrics["accuracy"]  # sets hold the top class, and sometimes more
    fit = json.loads((run / "model.json").read_text())["extra"][KEY]
    assert len(fit["scores"]) == 24 and fit["temperature"] == metrics["temperature"]
    page = (run / "eval" / "report.html").read_text()
    assert 'id="sets"' in page and "Coverage asked <b>0.9</b>" in page

    rows = json.loads(sft("predict", run, image, "--coverage", "0.9", "--top-k", "2", "--format", "json").output)
    assert len(rows) == 2 and rows[0]["set"] == rows[1]["set"] and rows[0]["set"][0] == rows[0]["label"]
    wide = json.loads(sft("predict", run, image, "--coverage", "0.95", "--format", "json").output)
    assert set(rows[0]["set"]) <= set(wide[0]["set"])
    too_much = sft("predict", run, image, "--coverage", "0.97")  # 24 validation samples guarantee at most 0.96
    assert too_much.exit_code == 2 and "24 validation samples" in " ".join(too_much.output.split())

    info = json.loads((run / "model.json").read_text())
    info["extra"][KEY]["scores"] = info["extra"][KEY]["scores"][:5]  # as if the validation split held 5 samples
    (run / "model.json").write_text(json.dumps(info))
    assert sft("eval", run, "--top-losses", "0", "--coverage", "0.9").exit_code == 2  # asked for: an error
    assert sft("eval", run, "--top-losses", "0").exit_code == 0  # the default: left out, the evaluation goes on
    assert "set_coverage" not in json.loads((run / "eval" / "metrics.json").read_text())
