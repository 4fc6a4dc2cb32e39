"""Metrics of a trained classifier on held-out images, stored with the run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_MISTAKES_STORED = 200
# Every image's outcome is stored for the confusion-matrix drill-down, up to this many
# images and this many classes' probabilities each: a split of thousands of images over
# hundreds of classes stays a file of a few megabytes.
MAX_PREDICTIONS_STORED = 5000
PROBABILITIES_STORED = 5


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
    """Accuracy, top-k, per-class precision/recall/F1/support, confusion matrix, mistakes,
    and each image's outcome ("predictions": true and predicted class indices and its most
    likely classes' probabilities) for drilling into a cell of the confusion matrix.

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
    predictions = []
    for idx in range(min(len(y_true), MAX_PREDICTIONS_STORED)):
        order = np.argsort(-probabilities[idx])[:PROBABILITIES_STORED]
        predictions.append({
            **(dict(images[idx]) if idx < len(images) else {}),
            "true": int(y_true[idx]),
            "predicted": int(y_pred[idx]),
            "probabilities": {classes[j]: round(float(probabilities[idx, j]), 6)
                              for j in order},
        })
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
        "predictions": predictions,
    }


def confused_pairs(split: dict[str, Any], limit: int | None = None) -> list[tuple[str, str, int]]:
    """(true class, predicted class, images) for the off-diagonal cells of a stored split's
    confusion matrix that hold images, most images first (ties in class order)."""
    classes, matrix = split["classes"], split["confusion_matrix"]
    pairs = [(classes[i], classes[j], int(count)) for i, row in enumerate(matrix)
             for j, count in enumerate(row) if i != j and count]
    pairs.sort(key=lambda pair: -pair[2])
    return pairs[:limit] if limit is not None else pairs


def cell_images(split: dict[str, Any], true: str, predicted: str) -> list[dict[str, Any]] | None:
    """The images of one confusion-matrix cell of a stored split, most confident first:
    {"hash", "filename", "true", "predicted", "confidence", "probabilities"} with class
    names and the most likely classes' probabilities. Splits stored before per-image
    outcomes were kept only know their (most confident) mistakes: None for their diagonal."""
    classes = split["classes"]
    if "predictions" in split:
        i, j = classes.index(true), classes.index(predicted)
        found = [{**p, "true": true, "predicted": predicted,
                  "confidence": p["probabilities"].get(predicted, 0.0)}
                 for p in split["predictions"] if p["true"] == i and p["predicted"] == j]
    elif true != predicted:
        found = [dict(m) for m in split.get("misclassified", [])
                 if m["true"] == true and m["predicted"] == predicted]
    else:
        return None
    found.sort(key=lambda p: -p["confidence"])
    return found
