"""Transferability scores: how well a pretrained model's frozen features suit a labelled dataset, without training.

Each score takes features (N, D) of the target data (and, for LEEP/NCE, the source model's class probabilities) and
the target labels; higher is better for all of them. `sft rank` computes them for several backbones and sorts them.

- LogME (You et al. 2021): the log marginal likelihood (evidence) per sample of a Bayesian linear model from the
  features to each class's one-hot target, its prior and noise precisions (alpha, beta) chosen by fixed-point
  evidence maximisation; averaged over classes. One SVD of the features serves every class.
- H-score (Bao et al. 2019): tr(cov(f)^-1 cov(E[f|y])), how much of the features' variance lies between the classes;
  with a Ledoit-Wolf shrunk covariance (Ibrahim et al. 2022), as the plain inverse is noise when D is near N.
- NCE (Tran et al. 2019): -H(Y|Z), Z = the source classifier's predicted (ImageNet) class.
- LEEP (Nguyen et al. 2020): the log-likelihood of the labels under the source classifier's soft predictions mapped
  through the empirical P(y|z).
- kNN accuracy: a cosine k-nearest-neighbour classifier fitted on one part of the sample, scored on the rest.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-5  # as the LogME reference code: keeps alpha and beta finite when m or the residual vanish


def logme(features: np.ndarray, labels: np.ndarray, max_iter: int = 11, tol: float = 1e-3) -> float:
    """LogME of features (N, D) for integer labels (N,): the mean over classes of the evidence per sample.

    Vectorised over classes: with F = U S V^T, the evidence and its fixed point depend on the target only through
    x = U^T y and the residual ||y||^2 - ||x||^2, so all K one-hot targets share one SVD. Each class stops on its own
    when t = alpha/beta changes by less than `tol` (relative), as in the reference code.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    n, d = f.shape
    if n != len(y):
        raise ValueError(f"logme: {n} feature rows for {len(y)} labels")
    classes = np.unique(y)
    targets = (y[:, None] == classes[None, :]).astype(np.float64)  # (N, K) one-hot
    x, sigma = _spectrum(f, targets)
    sigma = sigma[:, None]  # (k, 1): the k = min(N, D) eigenvalues of F^T F that can be non-zero
    x2 = x ** 2  # (k, K)
    res_x2 = (targets ** 2).sum(0) - x2.sum(0)  # (K,): the part of y outside the span of F
    k_classes = targets.shape[1]
    alpha, beta = np.ones(k_classes), np.ones(k_classes)
    m2, res2 = np.zeros(k_classes), np.zeros(k_classes)
    active = np.ones(k_classes, dtype=bool)
    for _ in range(max_iter):
        a, b = alpha[active], beta[active]
        t = a / b
        xa, sa = x2[:, active], sigma
        gamma = (sa / (sa + t)).sum(0)
        m2_a = (sa * xa / (t + sa) ** 2).sum(0)
        res2_a = (xa / (1 + sa / t) ** 2).sum(0) + res_x2[active]
        a_new = gamma / (m2_a + EPS)
        b_new = (n - gamma) / (res2_a + EPS)
        idx = np.flatnonzero(active)
        alpha[idx], beta[idx], m2[idx], res2[idx] = a_new, b_new, m2_a, res2_a
        converged = np.abs(a_new / b_new - t) / t <= tol
        active[idx[converged]] = False
        if not active.any():
            break
    log_det = np.log(alpha + beta * sigma).sum(0) + (d - len(sigma)) * np.log(alpha)  # log|alpha I + beta F^T F|
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det - beta / 2 * res2 - alpha / 2 * m2
                - n / 2 * np.log(2 * np.pi)) / n
    return float(evidence.mean())


def _spectrum(f: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U^T Y, S^2) of F = U S V^T, from the eigendecomposition of the smaller Gram matrix (several times faster
    than an SVD of F; the reference code does the same when N > D)."""
    n, d = f.shape
    if n <= d:
        sigma, u = np.linalg.eigh(f @ f.T)
        return u.T @ targets, np.clip(sigma, 0, None)
    sigma, v = np.linalg.eigh(f.T @ f)
    sigma = np.clip(sigma, 0, None)
    s = np.sqrt(sigma)
    keep = s > s.max() * max(n, d) * np.finfo(np.float64).eps  # directions outside F's span add nothing to U^T Y
    x = np.zeros((d, targets.shape[1]))
    x[keep] = (v[:, keep].T @ (f.T @ targets)) / s[keep, None]
    return x, sigma


def hscore(features: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
    """H-score: tr(cov(f)^-1 cov(E[f|y])). `shrinkage`: Ledoit-Wolf covariance, else the pseudo-inverse."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    f = f - f.mean(0)
    if shrinkage:
        from sklearn.covariance import ledoit_wolf
        cov, _ = ledoit_wolf(f, assume_centered=True)
    else:
        cov = f.T @ f / len(f)
    classes, inverse = np.unique(y, return_inverse=True)
    means = np.zeros((len(classes), f.shape[1]))
    np.add.at(means, inverse, f)
    means /= np.bincount(inverse)[:, None]
    # cov(E[f|y]) = sum_c p_c mu_c mu_c^T (f is centred), so the trace is sum_c p_c mu_c^T cov^-1 mu_c
    p = np.bincount(inverse) / len(f)
    if shrinkage:  # Ledoit-Wolf is well conditioned: a solve
        solved = np.linalg.solve(cov, means.T)
    else:
        solved = np.linalg.pinv(cov, rcond=1e-15, hermitian=True) @ means.T
    return float((p * (means.T * solved).sum(0)).sum())


def nce(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """NCE: -H(Y|Z) in nats, Z = argmax of the source model's probabilities (its hard pseudo-labels)."""
    z = np.asarray(source_probs).argmax(1)
    y = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)[1]
    joint = np.zeros((z.max() + 1, y.max() + 1))
    np.add.at(joint, (z, y), 1.0)
    joint /= joint.sum()
    p_z = joint.sum(1, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log((joint / np.where(p_z > 0, p_z, 1))[nz])).sum())


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: mean log of sum_z P(y_i|z) theta_z(x_i), with P(y|z) the empirical conditional from the soft joint."""
    theta = np.asarray(source_probs, dtype=np.float64)
    y = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)[1]
    onehot = np.eye(y.max() + 1)[y]  # (N, C)
    joint = theta.T @ onehot / len(y)  # (Z, C): P(z, y)
    p_y_given_z = joint / np.maximum(joint.sum(1, keepdims=True), 1e-300)
    eep = (theta @ p_y_given_z)[np.arange(len(y)), y]
    return float(np.log(np.maximum(eep, 1e-300)).mean())


def knn_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                 k: int = 10) -> float:
    """Accuracy on `test` of a cosine k-nearest-neighbour vote among `train` (ties: the nearer neighbours win)."""
    train, test = np.asarray(train, dtype=np.float32), np.asarray(test, dtype=np.float32)
    center = train.mean(0)  # cosine around the training features' mean: post-ReLU features are all positive
    a, b = _unit(train - center), _unit(test - center)
    train_labels = np.asarray(train_labels).reshape(-1)
    k = min(k, len(a))
    sims = b @ a.T
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    votes = np.zeros((len(b), int(train_labels.max()) + 1))
    rows = np.repeat(np.arange(len(b)), k)
    weights = 1.0 + 1e-3 * np.take_along_axis(sims, nearest, 1).reshape(-1)  # similarity breaks ties
    np.add.at(votes, (rows, train_labels[nearest].reshape(-1)), weights)
    return float((votes.argmax(1) == np.asarray(test_labels).reshape(-1)).mean())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
