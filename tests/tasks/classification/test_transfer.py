"""Transferability scores: LogME against a slow direct implementation, and every score orders informative features
above noise."""

import numpy as np
import pytest

from sft.tasks.classification.tools.transfer import EPS, hscore, knn_accuracy, leep, logme, nce


def logme_direct(f: np.ndarray, y: np.ndarray, max_iter: int = 11, tol: float = 1e-3) -> float:
    """The paper's Algorithm 1, class by class, with the matrices written out: A = alpha I + beta F^T F,
    m = beta A^-1 F^T y, gamma = sum beta s_i / (alpha + beta s_i), and the evidence with log|A|."""
    f = f.astype(np.float64)
    n, d = f.shape
    ftf = f.T @ f
    eig = np.linalg.eigvalsh(ftf)
    evidences = []
    for c in np.unique(y):
        t_y = (y == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            t = alpha / beta
            a = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.solve(a, f.T @ t_y)
            gamma = (beta * eig / (alpha + beta * eig)).sum()
            m2 = m @ m
            res2 = ((f @ m - t_y) ** 2).sum()
            alpha = gamma / (m2 + EPS)
            beta = (n - gamma) / (res2 + EPS)
            if abs(alpha / beta - t) / t <= tol:
                break
        _, log_det = np.linalg.slogdet(alpha * np.eye(d) + beta * ftf)
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det - beta / 2 * res2
                    - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def blobs(n=300, d=20, classes=4, separation=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.normal(size=(classes, d)) * separation
    return centers[y] + rng.normal(size=(n, d)), y


@pytest.mark.parametrize("n,d", [(200, 16), (40, 64)])  # N > D and D > N (zero eigenvalues of F^T F)
def test_logme_vectorised_equals_direct(n, d):
    f, y = blobs(n, d, classes=5, separation=1.0, seed=n)
    assert logme(f, y) == pytest.approx(logme_direct(f, y), rel=1e-8, abs=1e-10)


def test_logme_ranks_informative_above_noise_and_is_scale_sensible():
    f, y = blobs()
    noise = np.random.default_rng(1).normal(size=f.shape)
    weak, _ = blobs(separation=0.3)
    assert logme(f, y) > logme(weak, y) > logme(noise, y)
    # adding noise dimensions to good features lowers LogME (the evidence pays for the extra parameters)
    assert logme(np.hstack([f, noise]), y) < logme(f, y)


def test_hscore_and_knn_rank_informative_above_noise():
    f, y = blobs()
    noise = np.random.default_rng(1).normal(size=f.shape)
    for shrink in (True, False):
        assert hscore(f, y, shrinkage=shrink) > hscore(noise, y, shrinkage=shrink) + 0.5
    assert knn_accuracy(f[:200], y[:200], f[200:], y[200:]) > 0.9
    assert knn_accuracy(noise[:200], y[:200], noise[200:], y[200:]) < 0.5


def test_nce_and_leep():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 500)
    # a source model whose top class determines the target class, and one that knows nothing about it
    aligned = np.full((500, 10), 0.01)
    aligned[np.arange(500), y * 3] = 0.91
    random = rng.dirichlet(np.ones(10), size=500)
    assert nce(aligned, y) == pytest.approx(0.0, abs=1e-12)  # Y is a function of Z: H(Y|Z) = 0
    assert nce(random, y) < -0.8  # close to -log(3)
    assert leep(aligned, y) > leep(random, y)
    assert leep(random, y) == pytest.approx(-np.log(3), abs=0.1)
    assert leep(aligned, y) < 0


def test_hscore_equals_its_definition():
    f, y = blobs(n=200, d=8)
    centred = f - f.mean(0)
    cov = centred.T @ centred / len(f)
    g = np.stack([centred[y == c].mean(0) for c in y])  # E[f|y] of each sample
    direct = np.trace(np.linalg.pinv(cov) @ (g.T @ g / len(f)))
    assert hscore(f, y, shrinkage=False) == pytest.approx(direct, rel=1e-8)
    assert 0 < hscore(f, y) < f.shape[1]  # at most D (all variance between the classes)
