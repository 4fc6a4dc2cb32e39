"""The dataset as a map: backbone features projected to two dimensions, with outliers.

PCA, not UMAP: it is a few lines of NumPy, deterministic, and its axes mean something
(the directions along which the images differ most). What PCA flattens the outlier
score does not: it is measured in the leading components, whitened, as each image's
distance from its own class's centre, and flagged with a robust z-score (median and MAD
of that class's distances; 3.5 as Iglewicz and Hoaglin suggest).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from .datasets import ImageRecord

OUTLIER_COMPONENTS = 20
OUTLIER_Z = 3.5


def principal_components(features: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores on the first `n` principal components of the standardised features, and
    the share of the variance each explains."""
    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    # The eigenvectors of the smaller of X X^T and X^T X: a full SVD takes seconds.
    if len(x) <= x.shape[1]:
        values, vectors = np.linalg.eigh(x @ x.T)
        order = np.argsort(values)[::-1]
        values = np.maximum(values[order], 0.0)
        scores = vectors[:, order] * np.sqrt(values)
    else:
        values, vectors = np.linalg.eigh(x.T @ x)
        order = np.argsort(values)[::-1]
        values = np.maximum(values[order], 0.0)
        scores = x @ vectors[:, order]
    n = min(n, len(values))
    share = values[:n] / values.sum() if values.sum() else np.zeros(n)
    scores = scores[:, :n]
    # A sign convention, so the same features always draw the same map.
    signs = np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(n)])
    return scores * np.where(signs == 0, 1, signs), share


def outlier_scores(features: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Robust z-score of each image's distance from its class centre (higher: stranger)."""
    labels = np.asarray(labels)
    scores, _ = principal_components(features, min(OUTLIER_COMPONENTS, len(labels) - 1))
    scores = scores / (scores.std(axis=0) + 1e-9)
    z = np.zeros(len(labels))
    for label in np.unique(labels):
        members = labels == label
        distance = np.linalg.norm(scores[members] - scores[members].mean(axis=0), axis=1)
        median = np.median(distance)
        spread = 1.4826 * np.median(np.abs(distance - median))
        z[members] = (distance - median) / spread if spread > 0 else 0.0
    return z


def dataset_map(records: Sequence[ImageRecord], features: np.ndarray,
                suspects: Collection[str] = ()) -> dict[str, Any]:
    """One point per image: its place on the map, label, file, and whether it is a
    suspected label issue or an outlier."""
    xy, share = principal_components(features, 2)
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(xy), 2 - xy.shape[1]))])
    z = outlier_scores(features, [r.label for r in records]) if len(records) > 2 else (
        np.zeros(len(records)))
    return {
        "method": "pca",
        "explained": [round(float(v), 4) for v in share],
        "outlier_z": OUTLIER_Z,
        "points": [
            {"hash": r.hash, "file": r.filename, "label": r.label,
             "x": round(float(xy[i, 0]), 4), "y": round(float(xy[i, 1]), 4),
             "outlier_z": round(float(z[i]), 3), "outlier": bool(z[i] > OUTLIER_Z),
             "suspect": r.hash in suspects}
            for i, r in enumerate(records)
        ],
    }
