"""How far a confidence can be trusted: expected calibration error, reliability diagrams and
temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks").

A run's head ends in a softmax, so log p differs from its logits by a per-row constant that
softmax ignores: softmax(log(p) / T) is the temperature-scaled prediction, p^(1/T)
renormalised. One T > 0 is fitted on the validation images (the NLL minimum) and stored
with the run's evaluation; prediction and exports fold it into the last layer's weights
(softmax(z / T) with z = xW + b is softmax(x(W/T) + b/T)), so both give the same numbers.
NumPy only here, apart from `fold_temperature`, which touches a Keras model it is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TLError
from .spec import DEFAULT_NOT_SURE_BELOW as DEFAULT_NOT_SURE_BELOW

N_BINS = 15
LOG_T_BOUNDS = (-3.0, 3.0)  # T from about 0.05 to 20
# log(0) would make an image the model was certain about, and wrong, cost infinitely much.
_TINY = 1e-30
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
SUMMARY_FIELDS = ("temperature", "ece", "ece_calibrated", "ece_split")


def _checked(y_true: Any, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=int).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probabilities must be (n, classes) for {len(y)} labels, "
                         f"not {p.shape}")
    return y, p


def apply_temperature(probabilities: Any, temperature: float | None) -> np.ndarray:
    """softmax(log(p) / T) per row (p^(1/T), renormalised); T None or 1 returns p as is."""
    p = np.asarray(probabilities, dtype=np.float64)
    if temperature is None or temperature == 1.0 or p.size == 0:
        return p
    scaled = np.log(np.maximum(p, _TINY)) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    e = np.exp(scaled)
    return e / e.sum(axis=1, keepdims=True)


def reliability(y_true: Any, probabilities: Any, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """Per equal-width confidence bin (low, high]: the mean confidence of the predictions
    that fall in it, their accuracy and their count; empty bins have None for both means."""
    y, p = _checked(y_true, probabilities)
    confidence = p.max(axis=1) if len(p) else np.zeros(0)
    correct = (p.argmax(axis=1) == y) if len(p) else np.zeros(0, dtype=bool)
    # (low, high] as in Guo et al.; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append({
            "low": b / n_bins, "high": (b + 1) / n_bins, "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        })
    return bins


def expected_calibration_error(y_true: Any, probabilities: Any, n_bins: int = N_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width bins (0-1)."""
    bins = reliability(y_true, probabilities, n_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"])
                     for b in bins if b["count"]) / total)


def nll(y_true: Any, probabilities: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes after temperature scaling."""
    y, p = _checked(y_true, probabilities)
    if not len(y):
        return 0.0
    logits = np.log(np.maximum(p, _TINY)) / temperature
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_norm - shifted[np.arange(len(y)), y]))


def fit_temperature(y_true: Any, probabilities: Any, tolerance: float = 1e-4) -> float:
    """The T (about 0.05-20) that minimises the NLL, by golden-section search on log T.

    The NLL is convex in 1/T, hence unimodal in log T. When every prediction is right the
    NLL keeps falling as T shrinks: no mistake says how far to trust the model, so T
    stays 1 rather than sharpening every confidence to 100 %."""
    y, p = _checked(y_true, probabilities)
    if not len(y) or (p.argmax(axis=1) == y).all():
        return 1.0
    low, high = LOG_T_BOUNDS

    def cost(log_t: float) -> float:
        return nll(y, p, math.exp(log_t))

    a, b = low + (1 - _GOLDEN) * (high - low), low + _GOLDEN * (high - low)
    cost_a, cost_b = cost(a), cost(b)
    while high - low > tolerance:
        if cost_a <= cost_b:
            high, b, cost_b = b, a, cost_a
            a = low + (1 - _GOLDEN) * (high - low)
            cost_a = cost(a)
        else:
            low, a, cost_a = a, b, cost_b
            b = low + _GOLDEN * (high - low)
            cost_b = cost(b)
    return float(math.exp((low + high) / 2))


def calibration_report(val: tuple[Any, Any],
                       test: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """T fitted on the validation (labels, probabilities); ECE and the reliability bins
    before and after scaling, on the test split when it has images, else on validation
    (`split` says which: the validation figures after scaling are on the images T was
    fitted to, so they flatter it)."""
    temperature = fit_temperature(*val)
    split, (y, p) = ("test", test) if test is not None and len(test[0]) else ("val", val)
    calibrated = apply_temperature(p, temperature)
    return {
        "temperature": temperature,
        "fitted_on": "val",
        "split": split,
        "n_images": len(y),
        "n_bins": N_BINS,
        "ece": expected_calibration_error(y, p),
        "ece_calibrated": expected_calibration_error(y, calibrated),
        "nll": nll(y, p),
        "nll_calibrated": nll(y, calibrated),
        "reliability": {"before": reliability(y, p), "after": reliability(y, calibrated)},
    }


def summary_fields(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The run summary's calibration fields from a stored evaluation; None when it has no
    calibration (runs trained before it existed)."""
    report = evaluation.get("calibration") or {}
    return {"temperature": report.get("temperature"), "ece": report.get("ece"),
            "ece_calibrated": report.get("ece_calibrated"), "ece_split": report.get("split")}


def run_temperature(run_dir: str | Path) -> float | None:
    """The temperature stored with a run's model (its evaluation.json), or None."""
    try:
        evaluation = json.loads((Path(run_dir) / "evaluation.json").read_text())
    except (OSError, ValueError):
        return None
    value = (evaluation.get("calibration") or {}).get("temperature")
    return None if value is None else float(value)


def _softmax_dense(model: Any) -> Any:
    """The Dense layer with a softmax activation that ends the model (inside a nested head)."""
    import keras

    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            found = _softmax_dense(layer)
            if found is not None:
                return found
        elif isinstance(layer, keras.layers.Dense):
            activation = getattr(layer.activation, "__name__", "")
            return layer if activation == "softmax" else None
    return None


def fold_temperature(model: Any, temperature: float | None) -> Any:
    """`model` with T folded into its last Dense layer's weights (changed in place, and
    returned): it then outputs softmax(logits / T), with built-in layers only, so a saved
    or exported copy needs none of our code. T None or 1 leaves it as it is."""
    if temperature is None or temperature == 1.0:
        return model
    layer = _softmax_dense(model)
    if layer is None:
        raise TLError(f"The model {model.name!r} does not end in a softmax Dense layer: its "
                      "temperature cannot be folded into it.")
    kernel, *bias = layer.get_weights()
    layer.set_weights([(w / temperature).astype(w.dtype) for w in (kernel, *bias)])
    return model


def is_not_sure(confidence: float | None, threshold: float | None) -> bool:
    """Whether a (calibrated) top-1 confidence is too low to give a label; no threshold
    (None or 0) never says so, nor does a failed image (no confidence)."""
    return bool(threshold) and confidence is not None and confidence < threshold
