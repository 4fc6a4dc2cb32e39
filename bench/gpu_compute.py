"""What a backbone costs on this machine's accelerator, under each precision and batch.

`python bench/gpu_compute.py [--backbone NAME] [--weights FILE] [--out FILE]` builds a
backbone (by default the benchmark's MobileNetV2-0.35 at 224 px; ImageNet weights when
given, random weights time the same) with plain Keras on whatever backend Keras is set to
(`KERAS_BACKEND`), and measures, under each dtype policy (`--policies`) and batch size
(`--batches`), the parts named by `--parts`:

- `device`: the forward pass on images already on the device (the device's own ceiling),
  compiled with XLA; `device_graph`, on TensorFlow: the same without XLA;
- `host`: the forward pass fed float32 pixels from host memory by `model.predict`;
- `host_uint8` (JAX): fed uint8 pixels, cast on the device (what feature passes get);
- `finetune`: training the backbone's top blocks and a head with `model.fit`.

It answers the GPU questions of the performance work: which precision pays off, which
batch fills the device, whether XLA helps, and whether the device or the host (copying,
decoding) is the limit. Figures are images per second, each the best of a few timed
repeats after a warm-up that includes compilation. With `--out`, results are written
after every measurement, so a run cut short keeps them. BENCHMARKS-GPU.md has figures
from an NVIDIA H200.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

IMAGE_SIZE = 224
CLASSES = 5
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def _best_rate(images: int, work: Callable[[], Any], repeats: int) -> float:
    work()  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return images / best


BACKBONES: dict[str, Callable[[Any], Any]] = {
    "mobilenet_v2_0.35": lambda keras: partial(keras.applications.MobileNetV2, alpha=0.35),
    "efficientnet_b0": lambda keras: keras.applications.EfficientNetB0,
    "resnet50": lambda keras: keras.applications.ResNet50,
}
PARTS = ("device", "device_graph", "host", "host_uint8", "finetune")


def _backbone(keras: Any, name: str, weights: str | None) -> Any:
    return BACKBONES[name](keras)(input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                  include_top=False, pooling="avg", weights=weights)


def _host_uint8_forward(keras: Any, model: Any, pixels: np.ndarray,
                        batch: int) -> Callable[[], Any]:
    """Batches of uint8 pixels from host memory, cast on the device: a quarter of the bytes
    that float32 pixels move."""
    if keras.backend.backend() != "jax":
        raise SystemExit("host_uint8 is measured on the jax backend only")
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    forward = jax.jit(lambda t, n, x: model.stateless_call(
        t, n, x.astype(jnp.float32) / 127.5 - 1.0, training=False)[0])
    chunks = [pixels[i:i + batch] for i in range(0, len(pixels) - batch + 1, batch)]

    def run() -> Any:
        outs = [forward(trainable, frozen, chunk) for chunk in chunks]
        return [np.asarray(o) for o in outs]
    return run


def _on_device_forward(keras: Any, model: Any, batch: np.ndarray,
                       xla: bool = True) -> Callable[[], Any]:
    """The forward pass on pixels already on the device, compiled with XLA (`xla=False`:
    TensorFlow's own graph runtime, to tell whether XLA helps there)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        x = jax.device_put(batch)
        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]
        forward = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
        return lambda: forward(trainable, frozen, x).block_until_ready()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(batch)
        forward = tf.function(lambda x: model(x, training=False), jit_compile=xla)
        return lambda: forward(x).numpy()
    if backend == "torch":
        import torch

        x = torch.as_tensor(batch, device="cuda" if torch.cuda.is_available() else "cpu")

        def run() -> Any:
            with torch.no_grad():
                out = model(x, training=False)
            return out.cpu()
        return run
    raise SystemExit(f"unsupported Keras backend: {backend}")


def _partial_model(keras: Any, name: str, weights: str | None) -> Any:
    base = _backbone(keras, name, weights)
    # MobileNetV2: its top two blocks (block_15, block_16) and the last 1x1 conv; others:
    # the top fifth of the layers.
    boundary = next((i for i, layer in enumerate(base.layers)
                     if layer.name.startswith("block_15")), int(len(base.layers) * 0.8))
    for layer in base.layers[:boundary]:
        layer.trainable = False
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    features = base(inputs, training=False)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", dtype="float32")(features)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss="sparse_categorical_crossentropy")
    return model


def measure(backbone: str, weights: str | None, images: int, batches: list[int],
            policies: list[str], parts: list[str], repeats: int,
            record: Callable[[dict[str, Any]], None]) -> None:
    import keras

    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (images, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    raw = rng.integers(0, 256, (images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, images)

    def row(what: str, policy: str, batch: int, rate: float) -> None:
        record({"backbone": backbone, "what": what, "policy": policy, "batch": batch,
                "images_per_second": round(rate, 1)})

    for policy in policies:
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy(policy)
        model = _backbone(keras, backbone, weights)
        for batch in batches if "device" in parts else ():
            row("forward on device", policy, batch, _best_rate(
                batch, _on_device_forward(keras, model, pixels[:batch]), repeats * 5))
        if "device_graph" in parts and keras.backend.backend() == "tensorflow":
            for batch in batches:
                row("forward on device, no XLA", policy, batch, _best_rate(
                    batch, _on_device_forward(keras, model, pixels[:batch], xla=False),
                    repeats * 5))
        for batch in batches if "host" in parts else ():
            row("forward from host, float32 (predict)", policy, batch, _best_rate(
                images, lambda m=model, b=batch: m.predict(pixels, batch_size=b, verbose=0),
                repeats))
        for batch in batches if "host_uint8" in parts else ():
            row("forward from host, uint8", policy, batch, _best_rate(
                images - images % batch, _host_uint8_forward(keras, model, raw, batch),
                repeats))
        for batch in batches if "finetune" in parts else ():
            keras.backend.clear_session()
            keras.mixed_precision.set_global_policy(policy)
            trainer = _partial_model(keras, backbone, weights)
            row("fine-tune top blocks (fit)", policy, batch, _best_rate(
                images, lambda t=trainer, b=batch: t.fit(
                    pixels, labels, batch_size=b, epochs=1, verbose=0, shuffle=False),
                repeats))
    keras.mixed_precision.set_global_policy("float32")


def _machine(keras: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {"keras": keras.__version__, "backend": keras.backend.backend(),
                             "python": platform.python_version(), "cpus": os.cpu_count()}
    if facts["backend"] == "jax":
        import jax

        facts["jax"] = jax.__version__
        facts["devices"] = [str(d.device_kind) for d in jax.devices()]
    elif facts["backend"] == "tensorflow":
        import tensorflow as tf

        facts["tensorflow"] = tf.__version__
        facts["devices"] = [d.name for d in tf.config.list_physical_devices("GPU")] or ["CPU"]
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="mobilenet_v2_0.35")
    parser.add_argument("--weights", help="ImageNet weights file (no top) for the backbone; "
                        "random weights time the same")
    parser.add_argument("--images", type=int, default=4096, help="images per timed pass")
    parser.add_argument("--batches", default="32,512", help="comma-separated batch sizes")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--parts", default="device,host,finetune",
                        help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the results here as JSON after every figure")
    args = parser.parse_args(argv)

    import keras

    report: dict[str, Any] = {"machine": _machine(keras), "images": args.images,
                              "image_size": IMAGE_SIZE, "results": []}

    def record(row: dict[str, Any]) -> None:
        report["results"].append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as handle:
                json.dump(report, handle, indent=1)

    print(json.dumps(report["machine"]), flush=True)
    measure(args.backbone, args.weights, args.images,
            [int(b) for b in args.batches.split(",")], args.policies.split(","),
            args.parts.split(","), args.repeats, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
