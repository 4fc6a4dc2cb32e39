"""Benchmark: the engine against plain-Keras baselines on real photos, in one invocation.

Same photos (class-balanced subsets of ../shared/data/flowers128 with a fixed 80/20
train/val split), backbone (MobileNetV2-0.35, ImageNet weights from ../shared), head
(global average pooling, dropout 0.2, softmax), image size (224 px, the app's default),
epochs and batch size for all.
Baselines are written the way the common tutorials do it:

* seed recipe    - photos loaded into in-memory arrays, frozen base + head, `model.fit`
                   on the whole model (the backbone runs on every photo every epoch);
* dataset recipe - `image_dataset_from_directory` + `model.fit`, used for fine-tuning.

Every measurement runs in its own process (cold: interpreter start, TensorFlow import and
model build count), so its wall time and peak memory are its own. The engine's modules are
byte-compiled first, as an install leaves them. Figures:

  frozen_speedup        seed recipe / engine, frozen, 20 epochs               (>= 8)
  rerun_ratio           another head on the same photos / the first run       (<= 0.1)
  finetune_speedup      dataset recipe / engine, top 2 blocks, 10 epochs      (>= 2.5)
  pipeline_efficiency   features from stored files / bare predict on tensors  (>= 0.9)
  predict_p50_ratio     one photo end to end / bare model call, p50           (<= 1.5)
  model_ready_seconds   choosing a run -> its first prediction                 (<= 2)
  memory_ratio          peak RSS training on all photos / on 400              (<= 1.5)
  scaling               engine seconds for 250 / 1,000 / all photos (near-linear)

    python bench/run.py [--quick] [--json] [--markdown BENCHMARKS.md] [--demo]

--quick runs 1,000 photos for the comparisons (1,500 without it). --json prints every
figure as one JSON line, last. --markdown rewrites that file with the figures, the
machine and the command. --demo also times the browser demo path (bench/demo_path.py).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TL_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "flowers128"
WEIGHTS_HOME = SHARED / "weights" / "keras_home"
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"

BACKBONE = "MobileNetV2-0.35"
# The backbone's own input size and the app's default (the photos, 128 px, are scaled up
# alike on every side of the comparison).
IMAGE_SIZE = 224
BATCH_SIZE = 32
FROZEN_EPOCHS = 20
FINETUNE_EPOCHS = 10
FINETUNE_LR = 1e-4
LEARNING_RATE = 1e-3
DROPOUT = 0.2
SEED = 42  # the engine's default seed
VAL_FRACTION = 0.2
MEMORY_SMALL = 400
SCALING = (250, 1000, 0)  # 0: every photo
TARGETS = {
    "frozen_speedup": (">=", 8.0),
    "rerun_ratio": ("<=", 0.1),
    "finetune_speedup": (">=", 2.5),
    "pipeline_efficiency": (">=", 0.9),
    "predict_p50_ratio": ("<=", 1.5),
    "model_ready_seconds": ("<=", 2.0),
    "memory_ratio": ("<=", 1.5),
}


# --- the photo sets ----------------------------------------------------------------------


def all_photos() -> dict[str, list[Path]]:
    return {folder.name: sorted(folder.iterdir()) for folder in sorted(DATA.iterdir())
            if folder.is_dir()}


def make_set(photos: dict[str, list[Path]], count: int, target: Path) -> Path:
    """`count` photos (0: all), class-balanced, copied into train/ and val/ class folders."""
    total = sum(map(len, photos.values()))
    count = count or total
    chosen: dict[str, list[Path]] = {}
    for label, files in photos.items():
        share = round(count * len(files) / total)
        chosen[label] = random.Random(f"bench:{label}").sample(files, min(share, len(files)))
    for label, files in chosen.items():
        n_val = max(1, round(len(files) * VAL_FRACTION))
        for split, part in (("val", files[:n_val]), ("train", files[n_val:])):
            folder = target / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for file in part:
                shutil.copyfile(file, folder / file.name)
    return target


def photo_count(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*/*/*"))


# --- measurements (each runs in its own process) -------------------------------------------


def _head(keras: Any, base_output: Any, n_classes: int) -> Any:
    x = keras.layers.GlobalAveragePooling2D()(base_output)
    x = keras.layers.Dropout(DROPOUT)(x)
    return keras.layers.Dense(n_classes, activation="softmax")(x)


def _base(keras: Any) -> Any:
    """MobileNetV2-0.35 with ImageNet weights: the file `weights="imagenet"` downloads,
    read from the local cache since hosts here are offline."""
    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None,
                                          input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    base.load_weights(str(Path(os.environ["KERAS_HOME"]) / "models" / WEIGHTS_FILE))
    return base


def seed_recipe(data: Path) -> dict[str, Any]:
    """Photos into in-memory arrays, frozen base + head, `fit` on the whole model."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(SEED)  # as the engine's runs are seeded: reproducible

    classes = sorted(p.name for p in (data / "train").iterdir())

    def load(split: str) -> tuple[Any, Any]:
        images, labels = [], []
        for index, label in enumerate(classes):
            for file in sorted((data / split / label).iterdir()):
                image = keras.utils.load_img(file, target_size=(IMAGE_SIZE, IMAGE_SIZE))
                images.append(keras.utils.img_to_array(image))
                labels.append(index)
        return np.stack(images), keras.utils.to_categorical(labels, len(classes))

    x_train, y_train = load("train")
    x_val, y_val = load("val")
    base = _base(keras)
    base.trainable = False
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(inputs)
    model = keras.Model(inputs, _head(keras, base(x, training=False), len(classes)))
    model.compile(keras.optimizers.Adam(LEARNING_RATE), "categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=FROZEN_EPOCHS,
                        validation_data=(x_val, y_val), verbose=0)
    return _accuracies(history)


def dataset_recipe(data: Path) -> dict[str, Any]:
    """`image_dataset_from_directory` + `fit`, the top 2 blocks of the base trainable
    (block_16 and Conv_1; BatchNormalization frozen, in inference mode)."""
    import keras

    keras.utils.set_random_seed(SEED)

    def load(split: str, shuffle: bool) -> Any:
        return keras.utils.image_dataset_from_directory(
            data / split, image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=BATCH_SIZE,
            label_mode="categorical", shuffle=shuffle, seed=1)

    train, val = load("train", True), load("val", False)
    base = _base(keras)
    base.trainable = True
    top = next(i for i, layer in enumerate(base.layers) if layer.name.startswith("block_16_"))
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= top and not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(inputs)
    n_classes = len(train.class_names)
    model = keras.Model(inputs, _head(keras, base(x, training=False), n_classes))
    model.compile(keras.optimizers.Adam(FINETUNE_LR), "categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(train.prefetch(-1), validation_data=val.prefetch(-1),
                        epochs=FINETUNE_EPOCHS, verbose=0)
    return _accuracies(history)


def _accuracies(history: Any) -> dict[str, Any]:
    accuracy = history.history["val_accuracy"]
    return {"val_accuracy": float(max(accuracy)), "final_val_accuracy": float(accuracy[-1])}


def engine_cli(data: Path, workspace: Path, *options: str) -> dict[str, Any]:
    """`python -m tl_engine train` as a user runs it: ingest, queue, a worker process
    trains, the command waits for the result (the parent times this whole process)."""
    command = [sys.executable, "-m", "tl_engine", "--workspace", str(workspace), "train",
               "--data", str(data), "--project", "bench", "--backbone", BACKBONE,
               "--image-size", str(IMAGE_SIZE), "--batch-size", str(BATCH_SIZE),
               "--dropout", str(DROPOUT), "--no-progress", "--json", *options]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"tl_engine train failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def engine_in_process(data: Path, workspace: Path) -> dict[str, Any]:
    """A frozen run trained in this process (ingest, then the worker loop): its peak
    memory is this process's."""
    sys.path.insert(0, str(ROOT))
    from tl_engine import runs
    from tl_engine.datasets import ingest_folder
    from tl_engine.jobs import submit_run, worker_main
    from tl_engine.spec import RunSpec
    from tl_engine.store import Workspace

    ws = Workspace(workspace)
    dataset = ingest_folder(ws, data, project="bench")
    spec = RunSpec(backbone=BACKBONE, image_size=IMAGE_SIZE, epochs=FROZEN_EPOCHS,
                   batch_size=BATCH_SIZE, dropout=DROPOUT)
    submission = submit_run(ws, "bench", dataset.id, spec, start_worker=False)
    worker_main(ws)
    run = runs.get_run(ws, submission.run_id)
    return {"status": str(run.status), "val_accuracy": run.val_accuracy,
            "photos": len(dataset.records)}


def pipeline(workspace: Path) -> dict[str, Any]:
    """Features from the stored JPEG files (the engine's path) against the same model's
    bare `predict` on tensors decoded beforehand; both warmed up first."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from PIL import Image

    from tl_engine.datasets import list_datasets
    from tl_engine.features import FeatureCache, extract_features, feature_extractor
    from tl_engine.store import Workspace

    ws = Workspace(workspace)
    records = list(list_datasets(ws, "bench")[0].records)
    extractor = feature_extractor(BACKBONE, image_size=IMAGE_SIZE)
    model = extractor.model
    pixels = np.stack([np.asarray(Image.open(ws.image_path(r.hash)).convert("RGB").resize(
        (IMAGE_SIZE, IMAGE_SIZE)), dtype=np.float32) for r in records])
    batch = 64

    def ours(table: str, subset: list[Any]) -> float:
        started = time.perf_counter()
        extract_features(ws, model, extractor.key, [("bench", subset)], batch,
                         cache=FeatureCache(ws, table=table))
        return time.perf_counter() - started

    def bare(array: Any) -> float:
        # The model's compiled predict step on batches already in memory: no input pipeline.
        started = time.perf_counter()
        for start in range(0, len(array), batch):
            model.predict_on_batch(array[start:start + batch])
        return time.perf_counter() - started

    ours("warm_up", records[:batch])
    bare(pixels[-(len(pixels) % batch or batch) - batch:])  # a full batch and the last one
    # Interleaved, the best of each side: a machine whose speed drifts over the seconds
    # this takes (shared cores) moves both sides alike.
    bare_times, ours_times = [], []
    for attempt in range(3):
        bare_times.append(bare(pixels))
        ours_times.append(ours(f"pass_{attempt}", records))
    bare_seconds, ours_seconds = min(bare_times), min(ours_times)
    return {"photos": len(records), "bare_images_per_s": len(records) / bare_seconds,
            "engine_images_per_s": len(records) / ours_seconds,
            "pipeline_efficiency": bare_seconds / ours_seconds}


def prediction(workspace: Path, run_id: str, photos: Path) -> dict[str, Any]:
    """Choosing a run -> its first prediction; then warm single photos end to end against
    the bare model call, and a batch's throughput."""
    sys.path.insert(0, str(ROOT))
    started = time.perf_counter()
    import keras  # noqa: F401 - the server has imported it long before anyone predicts
    import numpy as np

    tf_import = time.perf_counter() - started
    from tl_engine.images import load_rgb_array
    from tl_engine.pipeline import to_model_input
    from tl_engine.predict import load_predictor
    from tl_engine.store import Workspace

    files = sorted(photos.glob("val/*/*"))
    items = [(f.name, f.read_bytes()) for f in files]
    ws = Workspace(workspace)
    started = time.perf_counter()
    predictor = load_predictor(ws, run_id)
    predictor.predict(items[:1])
    ready = time.perf_counter() - started

    singles = items[1:41]
    decoded = [to_model_input(load_rgb_array(data, name), predictor.image_size)[None]
               .astype(np.float32) for name, data in singles]
    predictor.wait_until_traced(120)  # warm means on its graph: eager runs only at first
    for item, x in zip(singles[:5], decoded[:5], strict=True):  # warm both paths
        predictor.predict([item])
        predictor.model.predict_on_batch(x)
    # Interleaved, each first in turn, three times over the photos: the two medians see the
    # same moments of a busy machine.
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    for rep in range(3):
        for i, (item, x) in enumerate(zip(singles, decoded, strict=True)):
            calls = [("ours", lambda item=item: predictor.predict([item])),
                     ("bare", lambda x=x: predictor.model.predict_on_batch(x))]
            for name, call in calls[::-1] if (i + rep) % 2 else calls:
                begun = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - begun)
    ours, bare = (float(np.median(times[name])) for name in ("ours", "bare"))
    batch = (items * (256 // len(items) + 1))[:256]
    begun = time.perf_counter()
    predictor.predict(batch)
    batch_seconds = time.perf_counter() - begun
    return {"tf_import_seconds": tf_import, "model_ready_seconds": ready,
            "predict_p50_ms": ours * 1000, "bare_p50_ms": bare * 1000,
            "predict_p50_ratio": ours / bare, "batch_images_per_s": len(batch) / batch_seconds}


def measure_here(name: str, args: dict[str, Any]) -> dict[str, Any]:
    data = Path(args["data"]) if "data" in args else None
    workspace = Path(args["workspace"]) if "workspace" in args else None
    if name == "seed-recipe":
        return seed_recipe(data)
    if name == "dataset-recipe":
        return dataset_recipe(data)
    if name == "engine-in-process":
        return engine_in_process(data, workspace)
    if name == "pipeline":
        return pipeline(workspace)
    if name == "prediction":
        return prediction(workspace, args["run_id"], data)
    raise SystemExit(f"no measurement {name!r}")


# --- the orchestrating process -------------------------------------------------------------


def measure(name: str, **args: Any) -> dict[str, Any]:
    """One measurement in a fresh Python process: its figures, wall time and peak RSS."""
    command = [sys.executable, __file__, "--measure", name, "--args",
               json.dumps({k: str(v) for k, v in args.items()})]
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=_child_env(), cwd=ROOT)
    seconds = time.perf_counter() - started
    if out.returncode:
        raise SystemExit(f"measurement {name} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["seconds"] = seconds
    return result


def timed_cli(data: Path, workspace: Path, *options: str) -> dict[str, Any]:
    started = time.perf_counter()
    result = engine_cli(data, workspace, *options)
    result["train_seconds"] = result.pop("seconds")  # the worker's own account
    result["seconds"] = time.perf_counter() - started
    return result


def _child_env(**extra: str) -> dict[str, str]:
    # Measurements that run the worker loop in their own process must not linger after it.
    # As in a worker the app starts (see tl_engine.jobs.spawn_worker): one BLAS thread.
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TL_WORKER_IDLE_S="0",
                OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"), **extra)


def stop_workers(workspace: Path) -> None:
    """End the worker processes a workspace's runs left waiting for more work."""
    wanted = ["--workspace", str(workspace), "worker"]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if any(argv[i:i + 3] == wanted for i in range(len(argv))):
            os.kill(int(proc.name), signal.SIGTERM)
            _wait_gone(int(proc.name))


def _wait_gone(pid: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)  # polling a pid we signalled: there is nothing to wait on


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores (os.cpu_count), {platform.system()}"


def run_all(quick: bool, demo: bool, log: Any, photos_override: int = 0) -> dict[str, Any]:
    main_count = photos_override or (1000 if quick else 1500)
    root = Path(tempfile.mkdtemp(prefix="tl-bench-"))
    figures: dict[str, Any] = {"machine": machine(), "quick": quick, "photos": main_count}
    try:
        photos = all_photos()
        main_set = make_set(photos, main_count, root / "sets" / "main")
        log(f"photos: {photo_count(main_set)} ({IMAGE_SIZE} px, {BACKBONE}); work in {root}")

        # 1. frozen: the seed recipe against a cold engine run, then another head.
        seed = measure("seed-recipe", data=main_set)
        log(f"seed recipe, frozen, {FROZEN_EPOCHS} epochs: {seed['seconds']:.1f} s, "
            f"val acc {seed['val_accuracy']:.3f}")
        ws = root / "ws-frozen"
        os.environ["TL_WORKER_IDLE_S"] = "60"  # inherited by the worker it starts
        try:
            first = timed_cli(main_set, ws, "--epochs", str(FROZEN_EPOCHS))
            rerun = timed_cli(main_set, ws, "--epochs", str(FROZEN_EPOCHS),
                              "--hidden-units", "64")
        finally:
            os.environ.pop("TL_WORKER_IDLE_S")
            stop_workers(ws)
        cold_rerun = timed_cli(main_set, ws, "--epochs", str(FROZEN_EPOCHS),
                               "--hidden-units", "32")
        stop_workers(ws)
        log(f"engine, frozen: {first['seconds']:.1f} s, val acc {first['val_accuracy']:.3f}; "
            f"another head: {rerun['seconds']:.1f} s (worker still warm), "
            f"{cold_rerun['seconds']:.1f} s (new worker)")
        device = first.get("device") or ""
        figures.update(
            device=device, gpu="GPU" in device and not device.startswith("CPU"),
            seed_recipe_seconds=seed["seconds"], seed_recipe_val_accuracy=seed["val_accuracy"],
            engine_frozen_seconds=first["seconds"],
            engine_frozen_val_accuracy=first["val_accuracy"],
            frozen_speedup=seed["seconds"] / first["seconds"],
            rerun_seconds=rerun["seconds"], rerun_ratio=rerun["seconds"] / first["seconds"],
            cold_rerun_seconds=cold_rerun["seconds"],
            cold_rerun_ratio=cold_rerun["seconds"] / first["seconds"])

        # 2. fine-tuning the top 2 blocks: image_dataset_from_directory against the engine.
        base = measure("dataset-recipe", data=main_set)
        tuned = timed_cli(main_set, root / "ws-finetune", "--strategy", "partial",
                          "--unfreeze", "2", "--unfreeze-unit", "blocks",
                          "--epochs", str(FINETUNE_EPOCHS),
                          "--learning-rate", str(FINETUNE_LR))
        stop_workers(root / "ws-finetune")
        log(f"fine-tune top 2 blocks, {FINETUNE_EPOCHS} epochs: dataset recipe "
            f"{base['seconds']:.1f} s (val acc {base['val_accuracy']:.3f}), engine "
            f"{tuned['seconds']:.1f} s (val acc {tuned['val_accuracy']:.3f})")
        figures.update(
            dataset_recipe_seconds=base["seconds"],
            dataset_recipe_val_accuracy=base["val_accuracy"],
            engine_finetune_seconds=tuned["seconds"],
            engine_finetune_val_accuracy=tuned["val_accuracy"],
            finetune_speedup=base["seconds"] / tuned["seconds"],
            finetune_accuracy_gap=tuned["val_accuracy"] - base["val_accuracy"])

        # 3. the input pipeline, 4. predictions (on the frozen run's workspace and model).
        flow = measure("pipeline", workspace=ws)
        log(f"pipeline: {flow['engine_images_per_s']:.0f} photos/s from files, "
            f"{flow['bare_images_per_s']:.0f}/s bare: {flow['pipeline_efficiency']:.2f}")
        figures.update({k: flow[k] for k in
                        ("pipeline_efficiency", "engine_images_per_s", "bare_images_per_s")})
        predicted = measure("prediction", workspace=ws, run_id=first["run_id"], data=main_set)
        log(f"prediction: ready in {predicted['model_ready_seconds']:.2f} s, p50 "
            f"{predicted['predict_p50_ms']:.1f} ms vs bare {predicted['bare_p50_ms']:.1f} ms, "
            f"batch {predicted['batch_images_per_s']:.0f} photos/s")
        figures.update({k: v for k, v in predicted.items() if k != "seconds"})

        # 5. memory and 6. scaling: frozen runs on growing sets, each in its own process.
        sizes = sorted({MEMORY_SMALL, *SCALING}, key=lambda n: n or 10**9)
        trained: dict[int, dict[str, Any]] = {}
        for size in sizes:
            folder = make_set(photos, size, root / "sets" / f"n{size}")
            trained[size] = measure("engine-in-process", data=folder,
                                    workspace=root / f"ws-n{size}")
            trained[size]["photos"] = photo_count(folder)
            log(f"engine, {trained[size]['photos']} photos: {trained[size]['seconds']:.1f} s, "
                f"peak {trained[size]['peak_rss_mb']:.0f} MB")
        figures["memory_ratio"] = trained[0]["peak_rss_mb"] / trained[MEMORY_SMALL]["peak_rss_mb"]
        figures["peak_rss_mb"] = {trained[s]["photos"]: trained[s]["peak_rss_mb"] for s in sizes}
        figures["scaling"] = {trained[s]["photos"]: trained[s]["seconds"] for s in SCALING}
        small, middle, large = (trained[s] for s in SCALING)
        figures["scaling_marginal_ratio"] = (
            ((large["seconds"] - middle["seconds"]) / (large["photos"] - middle["photos"]))
            / ((middle["seconds"] - small["seconds"]) / (middle["photos"] - small["photos"])))
        if demo:
            out = subprocess.run([sys.executable, str(ROOT / "bench" / "demo_path.py"),
                                  "--json"], capture_output=True, text=True, cwd=ROOT)
            if out.returncode == 0:
                figures["demo_path"] = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                figures["demo_path"] = {"error": out.stderr.strip()[-500:]}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures["targets_met"] = {name: _meets(figures[name], *TARGETS[name]) for name in TARGETS}
    return figures


def _meets(value: float, sense: str, bound: float) -> bool:
    return value >= bound if sense == ">=" else value <= bound


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 photos (under 6 minutes)")
    parser.add_argument("--json", action="store_true", help="every figure as the last line")
    parser.add_argument("--markdown", type=Path, help="write the figures into this file")
    parser.add_argument("--demo", action="store_true", help="also time the browser demo path")
    parser.add_argument("--photos", type=int, default=0, help=argparse.SUPPRESS)  # smoke runs
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        started = time.perf_counter()
        result = measure_here(args.measure, json.loads(args.args))
        result["inner_seconds"] = time.perf_counter() - started
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    if not DATA.is_dir() or not (WEIGHTS_HOME / "models" / WEIGHTS_FILE).is_file():
        raise SystemExit(f"needs the shared photos and weights: {DATA}, {WEIGHTS_HOME} "
                         "(set TL_SHARED to the folder holding data/ and weights/)")
    home = Path(tempfile.mkdtemp(prefix="tl-bench-keras-"))
    shutil.copytree(WEIGHTS_HOME, home, dirs_exist_ok=True)
    os.environ.update(KERAS_HOME=str(home), TL_OFFLINE="1")
    # Byte-compiled once, as `pip install` or a first run leaves them: a cold process
    # then reads the engine's modules, not compiles them (where PYTHONDONTWRITEBYTECODE is
    # set, every process would otherwise compile them anew).
    for package in ("tl_engine", "dashboard", "views"):
        compileall.compile_dir(str(ROOT / package), quiet=1)
    command = "python bench/run.py" + (" --quick" if args.quick else "")
    started = time.perf_counter()
    try:
        figures = run_all(args.quick, args.demo, log=lambda line: print(line, flush=True),
                          photos_override=args.photos)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    figures["command"] = command
    figures["total_seconds"] = time.perf_counter() - started
    print(f"total: {figures['total_seconds']:.0f} s")
    for name, met in figures["targets_met"].items():
        sense, bound = TARGETS[name]
        print(f"  {name:<22}{figures[name]:>8.2f}  target {sense} {bound:g}  "
              f"{'met' if met else 'NOT met'}")
    if args.markdown:
        from bench_report import write_markdown

        write_markdown(args.markdown, figures, TARGETS)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
