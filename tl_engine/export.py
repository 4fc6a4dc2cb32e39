"""Exports of a completed run: .keras, SavedModel, TFLite (float32 and dynamic-range
quantized), labels.txt and a model card. Each takes RGB pixels 0-255 at the training size
and, for runs with a temperature, gives the calibrated probabilities the app shows: T is
folded into the last layer's weights, so the files need none of our code."""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

from . import runs
from .calibration import fold_temperature, run_temperature
from .datasets import load_dataset
from .errors import SpecError
from .model_file import checked_model_path, load_run_model, save_keras_model
from .phases import phases
from .registry import get_backbone
from .store import Workspace

FORMATS = ("keras", "savedmodel", "tflite", "tflite-quant", "labels", "card")
_FILE_NAMES = {
    "keras": "model.keras",
    "savedmodel": "savedmodel",
    "tflite": "model.tflite",
    "tflite-quant": "model.quant.tflite",
    "labels": "labels.txt",
    "card": "model_card.json",
}


def model_card(ws: Workspace, run_id: str) -> dict[str, Any]:
    run = runs.get_run(ws, run_id)
    runs.model_path(ws, run_id)  # raises unless completed
    spec, summary = run.spec, run.result
    entry = get_backbone(spec.backbone)
    dataset = load_dataset(ws, run.dataset_id)
    evaluation = runs.evaluation(ws, run_id)
    val = evaluation.get("val", {})
    temperature = run_temperature(ws.run_dir(run_id))
    return {
        "name": f"{spec.backbone} {spec.strategy} · {run_id}",
        "run_id": run_id,
        "project": run.project,
        "created_at": run.finished_at,
        "backbone": {"key": entry.key, "keras_application": entry.constructor,
                     "parameters": entry.params, "imagenet_top1": entry.imagenet_top1},
        "weights": spec.weights if spec.weights in ("imagenet", "none") else "file",
        "weights_identity": summary.weights_identity,
        "strategy": {"name": spec.strategy, "unfreeze": spec.unfreeze,
                     "unit": spec.unfreeze_unit,
                     "trainable_params": summary.trainable_params,
                     "frozen_params": summary.frozen_params,
                     "phases": [{"name": p.name, "epochs": p.epochs, "trains": p.trainable_text,
                                 "learning_rate": spec.learning_rate * p.lr_factor,
                                 "lr_per_block_down": p.lr_decay} for p in phases(spec)]},
        "training": spec.to_dict(),
        "data": {"dataset_id": dataset.id, "content_hash": dataset.content_hash,
                 "classes": list(dataset.classes), "images_per_class": dataset.counts(),
                 "n_train": summary.n_train, "n_val": summary.n_val,
                 "n_test": summary.n_test},
        "metrics": {"val_accuracy": val.get("accuracy"),
                    "val_top_k_accuracy": val.get("top_k_accuracy"),
                    "top_k": val.get("top_k"), "macro_f1": val.get("macro_f1"),
                    "test_accuracy": evaluation.get("test", {}).get("accuracy"),
                    "ece": summary.ece, "ece_calibrated": summary.ece_calibrated,
                    "epochs_run": run.epochs_run, "seconds": run.seconds},
        "labels": runs.labels(ws, run_id),
        "input": {"shape": [spec.image_size, spec.image_size, 3], "dtype": "float32",
                  "range": "RGB pixels 0-255, no normalisation (the model does it)",
                  "resize": "bilinear to the square input size, antialiased when it shrinks"},
        "output": {"shape": [len(dataset.classes)], "meaning": "softmax probabilities, "
                   "in the order of labels.txt" + (
                       "" if temperature is None else
                       f", calibrated: temperature {temperature:.4g} is folded into the "
                       "last layer (softmax(logits / T))"),
                   "temperature": temperature},
        "exported_at": time.time(),
    }


def export_run(
    ws: Workspace, run_id: str, fmt: str, out: str | Path | None = None, *,
    overwrite: bool = False,
) -> Path:
    """Write the export (cached under the run's folder) and copy it to `out` when given.

    `out` must lie outside the workspace (links resolved), whatever `overwrite` says, and
    must not exist unless `overwrite` is set; a SavedModel goes to a new or empty folder,
    or with `overwrite` replaces a folder that holds a SavedModel.
    """
    if fmt not in FORMATS:
        raise SpecError(f"Unknown export format {fmt!r}: use one of {', '.join(FORMATS)}.")
    destination = None if out is None else _checked_destination(ws, Path(out), fmt, overwrite)
    # Labels and the card do not read the model; every other format is made from it.
    if fmt in ("labels", "card"):
        model_file = runs.model_path(ws, run_id)
    else:
        model_file = checked_model_path(ws, run_id)
    folder = ws.run_dir(run_id) / "exports"
    folder.mkdir(exist_ok=True)
    target = folder / _FILE_NAMES[fmt]
    if not target.exists():
        _write_export(ws, run_id, fmt, model_file, target)
    if destination is None:
        return target
    if target.is_dir():
        if destination.exists():
            shutil.rmtree(destination)  # an empty folder, or a SavedModel `overwrite` allows
        shutil.copytree(target, destination)
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        # A copy next to the destination, then a rename: an existing file is replaced
        # whole or not at all.
        staging = destination.with_name(f".{destination.name}.{time.time_ns()}.part")
        try:
            shutil.copyfile(target, staging)
            staging.replace(destination)
        finally:
            staging.unlink(missing_ok=True)
    return destination


# What a SavedModel export writes into its folder: all that --force may replace there.
SAVED_MODEL_ENTRIES = frozenset({"saved_model.pb", "fingerprint.pb", "variables", "assets",
                                 "keras_metadata.pb"})


def _checked_destination(ws: Workspace, out: Path, fmt: str, overwrite: bool) -> Path:
    """`out` made absolute, once it is a place an export may be written to."""
    out = out.expanduser().absolute()
    resolved = out.resolve()
    root = ws.root.resolve()
    if resolved == root or root in resolved.parents:
        raise SpecError(
            f"--out {out} is inside the workspace {root}: the workspace holds the app's own "
            "files; export to a path outside it."
        )
    if fmt == "savedmodel":
        if out.is_dir() and not any(out.iterdir()):
            return out
        if out.exists() or out.is_symlink():
            if overwrite and out.is_dir() and not out.is_symlink() and (
                out / "saved_model.pb"
            ).is_file():
                # Replacing the folder must not take anything else with it.
                foreign = sorted(p.name for p in out.iterdir()
                                 if p.name not in SAVED_MODEL_ENTRIES)
                if not foreign:
                    return out
                raise SpecError(
                    f"--out {out} holds a SavedModel and other files ({', '.join(foreign[:3])}"
                    f"{' …' if len(foreign) > 3 else ''}): --force would remove them too. "
                    "Move them out, or give a new folder."
                )
            raise SpecError(
                f"--out {out} already exists and is not an empty folder: give a new folder "
                "for the SavedModel (--force replaces only a folder holding a SavedModel)."
            )
        return out
    if out.is_dir():
        raise SpecError(f"--out {out} is a folder: give a file path for the {fmt} export.")
    if fmt == "keras" and out.suffix != ".keras":
        raise SpecError(f"--out {out}: a Keras model file's name must end in .keras (Keras "
                        f"loads no other), say {out.name}.keras.")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise SpecError(
            f"--out {out} already exists: add --force to replace it, or choose another path."
        )
    return out


def _write_export(ws: Workspace, run_id: str, fmt: str, model_file: Path, target: Path) -> None:
    temperature = run_temperature(ws.run_dir(run_id))
    if fmt == "keras" and temperature in (None, 1.0):  # nothing to fold: the file as is
        ws.write_bytes_atomic(target, model_file.read_bytes())
    elif fmt == "keras":
        staging = target.with_name(f".{time.time_ns()}.{target.name}")
        try:
            save_keras_model(_model(ws, run_id), staging)
            staging.replace(target)
        finally:
            staging.unlink(missing_ok=True)
    elif fmt == "labels":
        ws.write_bytes_atomic(target, (ws.run_dir(run_id) / "labels.txt").read_bytes())
    elif fmt == "card":
        ws.write_json_atomic(target, model_card(ws, run_id))
    elif fmt == "savedmodel":
        staging = target.with_name(f".{target.name}.{time.time_ns()}")
        _model(ws, run_id).export(
            str(staging), format="tf_saved_model", verbose=False
        )
        try:
            staging.replace(target)
        except OSError:  # another export of the same run finished first: keep that one
            if not target.exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    else:
        import tensorflow as tf

        saved = export_run(ws, run_id, "savedmodel")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if fmt == "tflite-quant":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        ws.write_bytes_atomic(target, converter.convert())


def _model(ws: Workspace, run_id: str) -> Any:
    """The run's model as it predicts in the app: with its temperature folded in."""
    return fold_temperature(load_run_model(ws, run_id), run_temperature(ws.run_dir(run_id)))


def export_bytes(ws: Workspace, run_id: str, fmt: str) -> tuple[str, bytes]:
    """(file name, bytes) for a download button; a SavedModel comes zipped."""
    path = export_run(ws, run_id, fmt)
    if not path.is_dir():
        return f"{run_id}-{path.name}", path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(path.rglob("*")):
            if file.is_file():
                archive.write(file, Path("savedmodel") / file.relative_to(path))
    return f"{run_id}-savedmodel.zip", buffer.getvalue()


def card_json(ws: Workspace, run_id: str) -> str:
    return json.dumps(model_card(ws, run_id), indent=2)
