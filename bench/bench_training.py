"""Benchmark: the engine's frozen-backbone training against the plain Keras recipe.

Baseline (measured in the same invocation): `image_dataset_from_directory` + frozen
MobileNetV2-0.35 (ImageNet) + GlobalAveragePooling2D + Dense softmax, `fit` for N epochs,
the backbone running on every image every epoch. Against it:

* engine, first run  - features computed once, then the head trains on them;
* engine, other head - a second run with a different head: the feature cache is reused.

Each measurement runs in its own process so wall time and peak memory are its own.
Reported as ratios to the baseline; no absolute target is asserted anywhere.

    python bench/bench_training.py [--data ../shared/data/hymenoptera] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hymenoptera"
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "weights" / "keras_home"


def baseline(data: Path, epochs: int) -> dict:
    import keras

    train = keras.utils.image_dataset_from_directory(
        data / "train", image_size=(224, 224), batch_size=32, label_mode="categorical", seed=1)
    val = keras.utils.image_dataset_from_directory(
        data / "val", image_size=(224, 224), batch_size=32, label_mode="categorical",
        shuffle=False)
    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights="imagenet",
                                          input_shape=(224, 224, 3))
    base.trainable = False
    inputs = keras.Input((224, 224, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(inputs)
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=epochs, verbose=0)
    return {"val_accuracy": float(history.history["val_accuracy"][-1])}


def engine(data: Path, epochs: int, workspace: Path, hidden_units: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from tl_engine import runs
    from tl_engine.datasets import ingest_folder
    from tl_engine.jobs import submit_run, worker_main
    from tl_engine.spec import RunSpec
    from tl_engine.store import Workspace

    ws = Workspace(workspace)
    dataset = ingest_folder(ws, data, project="bench")
    spec = RunSpec(backbone="MobileNetV2-0.35", epochs=epochs, hidden_units=hidden_units)
    started = time.perf_counter()
    submission = submit_run(ws, "bench", dataset.id, spec, start_worker=False)
    worker_main(ws)
    run = runs.get_run(ws, submission.run_id)
    return {"val_accuracy": run.val_accuracy, "train_seconds": time.perf_counter() - started,
            "features_computed": run.result.features_computed}


def measure(mode: str, args: argparse.Namespace, workspace: Path) -> dict:
    command = [sys.executable, __file__, "--measure", mode, "--data", str(args.data),
               "--epochs", str(args.epochs), "--workspace", str(workspace)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--measure", choices=("baseline", "engine-first", "engine-other-head"))
    args = parser.parse_args()

    if args.measure:
        started = time.perf_counter()
        if args.measure == "baseline":
            result = baseline(args.data, args.epochs)
        else:
            hidden = 0 if args.measure == "engine-first" else 64
            result = engine(args.data, args.epochs, args.workspace, hidden)
        result["seconds"] = time.perf_counter() - started
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    if "KERAS_HOME" not in os.environ and DEFAULT_WEIGHTS.is_dir():
        home = Path(tempfile.mkdtemp(prefix="bench-keras-"))
        shutil.copytree(DEFAULT_WEIGHTS, home, dirs_exist_ok=True)
        os.environ["KERAS_HOME"] = str(home)
    os.environ.setdefault("TL_OFFLINE", "1")
    workspace = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    results = {mode: measure(mode, args, workspace)
               for mode in ("baseline", "engine-first", "engine-other-head")}
    base = results["baseline"]
    print(f"{'measurement':<20}{'seconds':>9}{'x baseline':>12}{'peak MB':>9}"
          f"{'x baseline':>12}{'val acc':>9}")
    for mode, r in results.items():
        print(f"{mode:<20}{r['seconds']:>9.1f}{r['seconds'] / base['seconds']:>12.2f}"
              f"{r['peak_rss_mb']:>9.0f}{r['peak_rss_mb'] / base['peak_rss_mb']:>12.2f}"
              f"{r['val_accuracy']:>9.3f}")
    print(json.dumps(results, indent=2))
    shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    main()
