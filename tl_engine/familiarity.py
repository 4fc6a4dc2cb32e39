"""Familiarity: does an image look like any of the images a run was trained on?

A classifier answers every image with one of its classes, often confidently, even a photo
of something it never saw. So at the end of training a run stores a profile of its
training images in the saved model's pooled-feature space, and prediction measures each
new image against it.

The profile: class means plus one shared covariance of the L2-normalised features,
low-rank plus isotropic (the top principal directions of the within-class scatter and the
average variance of the rest, as in probabilistic PCA: well conditioned even with fewer
images than feature dimensions, and small to store). An image's distance is its
Mahalanobis distance to the nearest class mean. Its familiarity is the share of the
calibration images that lie at least as far (a conformal p-value, interpolated, with an
exponential tail past the farthest one): about 0.5 for a typical image, near 0 for one
far from everything. The calibration images are the validation images plus every training
image measured against a profile fitted without it (5-fold), so a small dataset's few
validation images do not make the threshold a guess. Below 5 % an image is `unfamiliar`
(about the 95th percentile of the calibration distances).

The profile also keeps the features the model gives a fixed synthetic image; a model whose
features differ (its file replaced by other weights) gets no familiarity rather than a
wrong one. Runs trained before this version have no profile: familiarity is None for them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .store import Workspace

PROFILE_FILE = "familiarity.npz"
SUMMARY_FILE = "familiarity.json"
DEFAULT_PERCENTILE = 95.0
MAX_COMPONENTS = 64
# Relative difference between the fingerprint features stored at training and those of the
# loaded model above which the profile belongs to another model. Mixed precision and
# another device stay far below it.
FINGERPRINT_TOLERANCE = 0.02
_EPS = 1e-12


def _normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + _EPS)


def fingerprint_image(image_size: int) -> np.ndarray:
    """A fixed RGB image (a batch of one, float32 0-255) whose features identify a model."""
    rng = np.random.default_rng(20240917)
    ramp = np.linspace(0, 255, image_size)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, ramp[::-1]) / 2,
                       rng.uniform(0, 255, (image_size, image_size))], axis=-1)
    return pixels[None].astype(np.float32)


@dataclass(frozen=True)
class FamiliarityProfile:
    means: np.ndarray  # (classes, dim): class means of the normalised training features
    components: np.ndarray  # (k, dim): top principal directions of the within-class scatter
    variances: np.ndarray  # (k,): the scatter's variance along each of them
    residual_variance: float  # average variance in every other direction
    reference: np.ndarray  # sorted distances of the calibration (validation) images
    threshold: float  # distance past which an image is unfamiliar
    percentile: float  # familiarity below 1 - percentile / 100 is unfamiliar
    fingerprint: np.ndarray  # (dim,): the model's features of fingerprint_image
    n_train: int
    calibrated_on: str  # "validation images", or "training images" when a run has none

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of pooled features to its nearest class mean."""
        x = _normalised(features)
        best = np.full(len(x), np.inf)
        for mean in self.means:
            centred = x - mean
            projected = centred @ self.components.T
            rest = np.maximum((centred**2).sum(axis=1) - (projected**2).sum(axis=1), 0.0)
            squared = (projected**2 / self.variances).sum(axis=1) + rest / self.residual_variance
            best = np.minimum(best, squared)
        # Per dimension, so the numbers read alike across backbones.
        return np.sqrt(best / x.shape[1])

    def _curve(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The survival function's knots (0, 1) and (ref_i, 1 - i / (n + 1)), and the
        length over which the tail past the last one falls by a factor e."""
        ref = self.reference
        xs = np.concatenate([[0.0], ref])
        ys = 1.0 - np.arange(len(ref) + 1) / (len(ref) + 1)
        return xs, ys, max(float(ref[-1] - np.median(ref)), _EPS)

    def familiarity_of(self, distances: np.ndarray) -> np.ndarray:
        """Share of the reference images at least as far, in [0, 1], decreasing with distance."""
        xs, ys, scale = self._curve()
        distances = np.asarray(distances, dtype=np.float64)
        inside = np.interp(distances, xs, ys)
        tail = ys[-1] * np.exp(-(distances - xs[-1]) / scale)
        return np.clip(np.where(distances > xs[-1], tail, inside), 0.0, 1.0)

    def distance_at(self, level: float) -> float:
        """The distance at which familiarity falls to `level` (0 < level < 1)."""
        xs, ys, scale = self._curve()
        if level >= ys[-1]:
            return float(np.interp(level, ys[::-1], xs[::-1]))
        return float(xs[-1] + scale * np.log(ys[-1] / level))

    @property
    def threshold_familiarity(self) -> float:
        """The familiarity below which an image is unfamiliar."""
        return 1.0 - self.percentile / 100.0

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(familiarity, unfamiliar) per row of pooled features."""
        distances = self.distances(features)
        return self.familiarity_of(distances), distances > self.threshold

    def matches(self, fingerprint_features: np.ndarray) -> bool:
        """Whether a model's features of fingerprint_image are the ones profiled."""
        found = np.asarray(fingerprint_features, dtype=np.float64).ravel()
        if found.shape != self.fingerprint.shape:
            return False
        difference = np.linalg.norm(found - self.fingerprint)
        return bool(difference <= FINGERPRINT_TOLERANCE * (np.linalg.norm(self.fingerprint)
                                                           + _EPS))

    def summary(self) -> dict[str, Any]:
        """What a person reads in the run folder's familiarity.json."""
        return {
            "method": "Mahalanobis distance to the nearest class mean, L2-normalised pooled "
                      "features, shared low-rank + isotropic covariance",
            "feature_dim": int(self.means.shape[1]),
            "classes": int(self.means.shape[0]),
            "components": int(len(self.variances)),
            "n_train": self.n_train,
            "n_reference": int(len(self.reference)),
            "calibrated_on": self.calibrated_on,
            "percentile": self.percentile,
            "threshold_distance": self.threshold,
            "threshold_familiarity": self.threshold_familiarity,
        }


def _shape(x: np.ndarray, labels: np.ndarray, max_components: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Class means, principal directions, their variances and the residual variance of
    normalised features `x`."""
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    scatter = x - means[np.searchsorted(classes, labels)]
    n, dim = scatter.shape
    all_variance = float((scatter**2).sum()) / max(1, n)  # the sum of every eigenvalue
    total = all_variance / dim + _EPS
    # A direction needs a few images to be estimated; the ones the training images cannot
    # tell from noise stay in the isotropic part (else new images of the same kind, off the
    # span of the few training ones, all look far).
    k = int(min(max_components, max(0, (n - len(classes)) // 4), n, dim))
    squared, directions = _top_directions(scatter, k)
    eigen = squared / max(1, n)
    floor = 1e-3 * total
    residual = max((all_variance - float(eigen.sum())) / max(1, dim - k), floor)
    return means, directions, np.maximum(eigen, floor), residual


def _top_directions(scatter: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest squared singular values of `scatter` and their right singular vectors
    (rows), largest first: the eigenpairs of the smaller of its two Gram matrices, several
    times faster than the SVD of `scatter` itself (this runs six times per profile)."""
    n, dim = scatter.shape
    if k == 0:
        return np.zeros(0), np.zeros((0, dim))
    if n <= dim:
        values, vectors = np.linalg.eigh(scatter @ scatter.T)
        values, vectors = np.maximum(values[::-1][:k], 0.0), vectors[:, ::-1][:, :k]
        # Right singular vectors from the left ones: v = Xᵀu / σ.
        directions = (scatter.T @ vectors) / np.sqrt(np.maximum(values, _EPS))
        return values, directions.T
    values, vectors = np.linalg.eigh(scatter.T @ scatter)
    return np.maximum(values[::-1][:k], 0.0), vectors[:, ::-1][:, :k].T


def _held_out_distances(x: np.ndarray, labels: np.ndarray, max_components: int,
                        folds: int = 5) -> np.ndarray:
    """Each training image's distance to a profile fitted without it (k-fold): honest
    calibration points, so a small validation split does not make the threshold a guess."""
    counts = np.unique(labels, return_counts=True)[1]
    folds = min(folds, int(counts.min()) - 1)
    if folds < 2:
        return np.zeros(0)
    fold_of = np.zeros(len(x), dtype=int)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        fold_of[members] = np.arange(len(members)) % folds
    found = []
    for fold in range(folds):
        held = fold_of == fold
        means, components, variances, residual = _shape(x[~held], labels[~held],
                                                        max_components)
        profile = FamiliarityProfile(means, components, variances, residual, np.zeros(1),
                                     0.0, DEFAULT_PERCENTILE, np.zeros(1), int((~held).sum()),
                                     "")
        found.append(profile.distances(x[held]))
    return np.concatenate(found)


def fit_profile(train_features: np.ndarray, train_labels: np.ndarray,
                val_features: np.ndarray | None, fingerprint: np.ndarray,
                percentile: float = DEFAULT_PERCENTILE,
                max_components: int = MAX_COMPONENTS) -> FamiliarityProfile:
    """The profile of a run's training images, calibrated on its validation images and on
    each training image's distance to a profile fitted without it (5-fold)."""
    if not 50.0 <= percentile < 100.0:
        raise ValueError(f"percentile must be in [50, 100), not {percentile}")
    x = _normalised(train_features)
    labels = np.asarray(train_labels)
    means, components, variances, residual = _shape(x, labels, max_components)
    partial = FamiliarityProfile(
        means=means, components=components, variances=variances,
        residual_variance=residual, reference=np.zeros(1), threshold=0.0,
        percentile=float(percentile), fingerprint=np.asarray(fingerprint, np.float64).ravel(),
        n_train=len(x), calibrated_on="")
    has_val = val_features is not None and len(val_features) > 0
    held_out = _held_out_distances(x, labels, max_components)
    parts = [held_out] + ([partial.distances(val_features)] if has_val else [])
    if not sum(len(p) for p in parts):  # a class of one image: the training images alone
        parts = [partial.distances(train_features)]
    where = " and ".join((["held-out training images"] if len(held_out) else [])
                         + (["validation images"] if has_val else [])) or "training images"
    calibrated = dataclasses.replace(partial, reference=np.sort(np.concatenate(parts)),
                                     calibrated_on=where)
    return dataclasses.replace(
        calibrated, threshold=calibrated.distance_at(calibrated.threshold_familiarity))


def shared_profile(ws: Workspace, feature_key: str, train_hashes: Sequence[str],
                   train_labels: np.ndarray, train_features: np.ndarray,
                   val_hashes: Sequence[str], val_features: np.ndarray | None,
                   fingerprint: np.ndarray) -> FamiliarityProfile:
    """fit_profile for cached (frozen-backbone) features, kept in the workspace's feature
    cache: the profile depends on the features and the split alone, so every later run on
    them (another head, other settings) reads it instead of fitting six again."""
    digest = hashlib.sha256("\n".join([
        f"{feature_key}|{DEFAULT_PERCENTILE}|{MAX_COMPONENTS}",
        ",".join(f"{h}:{int(label)}" for h, label in zip(train_hashes, train_labels,
                                                            strict=True)),
        ",".join(val_hashes)]).encode()).hexdigest()[:32]
    folder = ws.features_db_path.parent / "profiles" / digest
    fingerprint = np.asarray(fingerprint, np.float64).ravel()
    kept = load_profile(folder)
    if kept is not None and kept.matches(fingerprint):
        return dataclasses.replace(kept, fingerprint=fingerprint)
    profile = fit_profile(train_features, train_labels, val_features, fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    save_profile(ws, folder, profile)
    return profile


def save_profile(ws: Workspace, run_dir: Path, profile: FamiliarityProfile) -> None:
    """familiarity.npz (what prediction loads, one atomic write) and familiarity.json."""
    fields = asdict(profile)
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in fields.items()})
    ws.write_bytes_atomic(run_dir / PROFILE_FILE, buffer.getvalue())
    ws.write_json_atomic(run_dir / SUMMARY_FILE, profile.summary())


def load_profile(run_dir: Path) -> FamiliarityProfile | None:
    """The run's profile; None for a run trained before profiles existed, or an unreadable
    file (prediction then goes on without familiarity)."""
    path = Path(run_dir) / PROFILE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return FamiliarityProfile(
                means=data["means"], components=data["components"],
                variances=data["variances"],
                residual_variance=float(data["residual_variance"]),
                reference=data["reference"], threshold=float(data["threshold"]),
                percentile=float(data["percentile"]), fingerprint=data["fingerprint"],
                n_train=int(data["n_train"]), calibrated_on=str(data["calibrated_on"]))
    except (OSError, KeyError, ValueError) as exc:
        import logging

        logging.getLogger(__name__).warning("ignoring unreadable %s: %s", path, exc)
        return None


def features_and_probabilities_model(model: Any) -> Any:
    """The loaded classifier with its pooled features as a second output (one forward pass
    for both); None when it has no layer named "pool"."""
    import keras

    try:
        pooled = model.get_layer("pool").output
    except ValueError:
        return None
    return keras.Model(model.inputs, [model.outputs[0], pooled], name="probs_and_features")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
