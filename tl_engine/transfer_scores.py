"""How well a backbone's features suit a labelled image set, before any training: plain
NumPy over a feature matrix (one row per image) and its labels.

- `linear_probe`: cross-validated accuracy of a multinomial logistic regression.
- `knn_accuracy`: leave-one-out accuracy of a cosine k-nearest-neighbour vote.
- `logme`: LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning", ICML 2021), the log marginal evidence of a Bayesian linear model,
  maximised over its prior and noise precisions; no hyper-parameters, no over-fitting.
- `kendall_tau`: how well one ranking predicts another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_FOLDS = 5
KNN_K = 5
PROBE_L2 = 1.0  # as scikit-learn's default C=1: loss summed over images + |W|^2 / 2
# The paper stops at a 1 % change of alpha/beta within ten steps; a tighter stop costs
# microseconds (each step is a few vector operations) and makes the score independent of
# where the iteration starts, hence of the features' scale.
_LOGME_ITERATIONS = 1000
_LOGME_TOLERANCE = 1e-6


def encode_labels(labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer codes for `labels` and the sorted class names they index."""
    classes = sorted(set(labels))
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[label] for label in labels], dtype=np.int64), classes


def stratified_folds(y: np.ndarray, k: int = MAX_FOLDS, seed: int = 42) -> list[np.ndarray]:
    """Held-out index sets for k-fold cross-validation, each class spread evenly over the
    folds. k shrinks to the smallest class's size (at least 2), so every fold can hold
    every class that has two images or more."""
    counts = np.bincount(y)
    k = max(2, min(k, int(counts[counts > 0].min())))
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for label in np.flatnonzero(counts):
        members = rng.permutation(np.flatnonzero(y == label))
        for i, member in enumerate(members):
            # Continuing where the last class stopped keeps the folds' sizes even.
            folds[(offset + i) % k].append(int(member))
        offset += len(members)
    return [np.sort(np.array(fold, dtype=np.int64)) for fold in folds if fold]


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Zero mean, unit variance per feature, measured on `train` only (dead features, all
    zero after a ReLU, stay zero instead of dividing by nothing)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std < 1e-8] = 1.0
    return [(m - mean) / std for m in (train, *others)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = PROBE_L2,
                iterations: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Weights and biases of an L2-regularised multinomial logistic regression.

    Nesterov's accelerated gradient with the step from Böhning's bound on the softmax
    loss's curvature (X'X/2): the loss is convex, so this converges without a line search
    or a learning rate to choose.
    """
    n, d = x.shape
    targets = np.eye(n_classes)[y]
    xb = np.hstack([x, np.ones((n, 1))])
    lipschitz = 0.5 * float(np.linalg.norm(xb, 2)) ** 2 + l2
    step = 1.0 / lipschitz
    penalty = np.ones((d + 1, 1))
    penalty[-1] = 0.0  # the bias is not shrunk
    w = np.zeros((d + 1, n_classes))
    previous = w
    for t in range(1, iterations + 1):
        look = w + (t - 1) / (t + 2) * (w - previous)
        gradient = xb.T @ (_softmax(xb @ look) - targets) + l2 * penalty * look
        previous, w = w, look - step * gradient
        if np.abs(w - previous).max() < 1e-6:
            break
    return w[:-1], w[-1]


def out_of_fold_probabilities(features: np.ndarray, y: np.ndarray, n_classes: int,
                              folds: Sequence[np.ndarray] | None = None,
                              l2: float = PROBE_L2, seed: int = 42) -> np.ndarray:
    """Each image's class probabilities from a linear probe that never saw it (one probe
    per fold, fitted on the other folds): the probe's accuracy, and the input confident
    learning wants. `l2` weighs |W|²/2 against the loss summed over the training images."""
    folds = stratified_folds(y, seed=seed) if folds is None else folds
    probabilities = np.zeros((len(y), n_classes))
    everything = np.arange(len(y))
    for held_out in folds:
        train = np.setdiff1d(everything, held_out)
        x_train, x_test = _standardize(features[train].astype(np.float64),
                                       features[held_out].astype(np.float64))
        weights, bias = fit_softmax(x_train, y[train], n_classes, l2)
        probabilities[held_out] = _softmax(x_test @ weights + bias)
    return probabilities


def linear_probe(features: np.ndarray, y: np.ndarray, n_classes: int,
                 folds: Sequence[np.ndarray]) -> float:
    """Cross-validated accuracy of a linear classifier on the features."""
    probabilities = out_of_fold_probabilities(features, y, n_classes, folds)
    return float((probabilities.argmax(axis=1) == y).mean())


def knn_accuracy(features: np.ndarray, y: np.ndarray, k: int = KNN_K,
                 chunk: int = 1024) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour vote by cosine similarity; each
    neighbour's vote is weighted by its similarity, which also breaks ties."""
    n = len(y)
    if n < 2:
        return 0.0
    k = min(k, n - 1)
    unit = features.astype(np.float64)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    n_classes = int(y.max()) + 1
    correct = 0
    for start in range(0, n, chunk):  # bounded memory: chunk x n similarities at a time
        rows = np.arange(start, min(n, start + chunk))
        similarity = unit[rows] @ unit.T
        similarity[np.arange(len(rows)), rows] = -np.inf  # leave the image itself out
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        weights = np.take_along_axis(similarity, nearest, axis=1) + 1.0  # cosine in [-1, 1]
        votes = np.zeros((len(rows), n_classes))
        np.add.at(votes, (np.repeat(np.arange(len(rows)), k), y[nearest].ravel()),
                  weights.ravel())
        correct += int((votes.argmax(axis=1) == y[rows]).sum())
    return correct / n


@dataclass(frozen=True)
class Evidence:
    value: float  # log evidence per image
    alpha: float  # prior precision of the weights
    beta: float  # precision of the noise


def _evidence_one(z: np.ndarray, outside: float, sigma: np.ndarray, n: int, d: int
                  ) -> Evidence:
    """LogME for one target vector, from its coordinates `z` = U'y in the left singular
    vectors of the features, the squared length of what lies outside them (`outside`),
    and the squared singular values `sigma` (eigenvalues of F'F; D - len(sigma) more are
    zero). The paper's fixed-point iteration on (alpha, beta)."""
    alpha, beta = 1.0, 1.0
    # The paper's guard against dividing by zero, kept where the scale is the targets'
    # (0/1); |m|^2 scales with the features, so its guard must be negligible at any scale.
    epsilon = 1e-5
    for _ in range(_LOGME_ITERATIONS):
        gamma = float((beta * sigma / (alpha + beta * sigma)).sum())
        # m = beta (alpha I + beta F'F)^-1 F'y, seen in the right singular vectors:
        # |m|^2 and |Fm - y|^2 need no D-sized vector.
        shrink = beta * sigma / (alpha + beta * sigma)
        m_norm2 = float((shrink**2 * z**2 / np.maximum(sigma, 1e-300)).sum())
        residual = float(((1.0 - shrink) ** 2 * z**2).sum()) + outside
        new_alpha = gamma / max(m_norm2, 1e-300)
        new_beta = (n - gamma) / (residual + epsilon)
        converged = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < _LOGME_TOLERANCE
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    shrink = beta * sigma / (alpha + beta * sigma)
    m_norm2 = float((shrink**2 * z**2 / np.maximum(sigma, 1e-300)).sum())
    residual = float(((1.0 - shrink) ** 2 * z**2).sum()) + outside
    log_det = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * np.log(alpha)
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det
                - beta / 2 * residual - alpha / 2 * m_norm2 - n / 2 * np.log(2 * np.pi))
    return Evidence(float(evidence / n), alpha, beta)


def logme(features: np.ndarray, y: np.ndarray) -> float:
    """LogME of features for integer labels: the mean over classes of the log evidence
    (per image) of a Bayesian linear regression onto that class's one-vs-rest indicator.

    Higher is better; values are comparable across backbones on the same images. The
    features are taken as they are (the evidence does not change when they are scaled).
    """
    return float(np.mean([e.value for e in logme_per_class(features, y)]))


def logme_per_class(features: np.ndarray, y: np.ndarray) -> list[Evidence]:
    """Each class's evidence and the precisions that maximise it, classes in label order.
    Computed from one thin SVD of the features, so a backbone with more features than
    there are images costs no D x D matrix."""
    f = features.astype(np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max() * 1e-10 if s.size else s.astype(bool)
    u, sigma = u[:, keep], s[keep] ** 2
    scores = []
    for label in np.unique(y):
        target = (y == label).astype(np.float64)
        z = u.T @ target
        outside = max(float(target @ target - z @ z), 0.0)
        scores.append(_evidence_one(z, outside, sigma, n, d))
    return scores


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two scorings of the same items: +1 same order, -1 reversed;
    ties in either count as neither agreeing nor disagreeing."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("kendall_tau needs two equally long scorings of two items or more")
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant = float((dx * dy).sum())
    pairs_x, pairs_y = float((dx != 0).sum()), float((dy != 0).sum())
    if not pairs_x or not pairs_y:
        return 0.0
    return concordant / np.sqrt(pairs_x * pairs_y)
