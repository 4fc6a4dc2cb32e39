"""Metrics of a trained classifier on held-out images, stored with the run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_MISTAKES_STORED = 200


def top_k_for(n_classes: int) -> int:
    """Top-k that still says something: 3 for many classes, 2 for a few; with two classes
    any top-2 is trivially right, so it falls back to top-1."""
    if n_classes > 4:
        return 3
    return 2 if n_classes > 2 else 1


def evaluate_predictions(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    images: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """Accuracy, top-k, per-class precision/recall/F1/support, confusion matrix, mistakes.

    `images` (same order as y_true) names each image: {"hash", "filename"}.
    """
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n = len(classes)
    y_pred = probabilities.argmax(axis=1) if len(y_true) else np.zeros(0, dtype=int)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    k = min(top_k_for(n), n)
    top_k = np.argsort(-probabilities, axis=1)[:, :k] if len(y_true) else np.zeros((0, k))
    top_k_hits = (top_k == y_true[:, None]).any(axis=1) if len(y_true) else np.zeros(0)

    per_class = {}
    for i, name in enumerate(classes):
        tp = confusion[i, i]
        predicted = confusion[:, i].sum()
        support = confusion[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support),
        }

    mistakes = []
    for idx in np.flatnonzero(y_pred != y_true):
        order = np.argsort(-probabilities[idx])
        info = dict(images[idx]) if idx < len(images) else {}
        mistakes.append(
            {
                **info,
                "true": classes[y_true[idx]],
                "predicted": classes[y_pred[idx]],
                "confidence": float(probabilities[idx, y_pred[idx]]),
                "probabilities": {classes[j]: float(probabilities[idx, j]) for j in order},
            }
        )
    mistakes.sort(key=lambda m: -m["confidence"])
    total = len(y_true)
    return {
        "n_images": int(total),
        "accuracy": float((y_pred == y_true).mean()) if total else 0.0,
        "top_k": int(k),
        "top_k_accuracy": float(top_k_hits.mean()) if total else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])) if n else 0.0,
        "per_class": per_class,
        "classes": list(classes),
        "confusion_matrix": confusion.tolist(),
        "misclassified": mistakes[:MAX_MISTAKES_STORED],
        "n_misclassified": len(mistakes),
    }
