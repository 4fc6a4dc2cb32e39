"""Which hardware trains: GPUs (memory growth, mixed precision, MirroredStrategy), else CPU.

`describe()` only looks; `configure()` changes TensorFlow's process-wide settings, once,
and is called by whatever is about to use TensorFlow for real (training, the dashboard).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "GPU" or "CPU"
    names: tuple[str, ...] = ()
    tensorflow: str = ""
    keras: str = ""
    mixed_precision: bool = False
    replicas: int = 1
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        if self.kind == "GPU":
            extra = " · mixed precision" if self.mixed_precision else ""
            return f"{len(self.names)}× GPU: {', '.join(self.names)}{extra}"
        return "CPU (no GPU visible)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gpu_name(tf: Any, gpu: Any) -> str:
    try:
        return str(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
    except Exception:  # details are best-effort on some drivers
        return str(gpu.name)


def _compute_capability(tf: Any, gpu: Any) -> tuple[int, int]:
    try:
        details = tf.config.experimental.get_device_details(gpu)
        return tuple(details.get("compute_capability", (0, 0)))
    except Exception:
        return (0, 0)


def _uses_mixed_precision(tf: Any, gpus: list[Any]) -> bool:
    """Mixed float16 pays off on tensor-core GPUs (compute capability 7.0+) and costs
    accuracy nowhere because the classifier's softmax stays float32."""
    return bool(gpus) and all(_compute_capability(tf, g) >= (7, 0) for g in gpus)


@functools.lru_cache(maxsize=1)
def configure() -> DeviceInfo:
    """Set up TensorFlow for this process once; call before building any model.

    Memory growth lets several processes share a GPU; mixed precision where it pays off
    (see `_uses_mixed_precision`); deterministic ops, so the same run gives the same model.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    notes: list[str] = []
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # already initialised in this process
            notes.append(f"memory growth not set: {exc}")
    mixed = _uses_mixed_precision(tf, gpus)
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    # Before any op runs in the process: kernels chosen earlier would keep their own
    # arithmetic, and the same run would differ in its low bits from worker to worker.
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception as exc:  # not every TF build offers it; results are then only close
        notes.append(f"op determinism not set: {exc}")
    return _device_info(tf, keras, gpus, mixed, notes)


def clear_keras_session(free_memory: bool = True) -> None:
    """Forget the Keras state a job left (layer names, graphs). Keras's clear_session also
    forgets the global dtype policy, so a warm worker's next job would lose mixed precision:
    it is set again. `free_memory`: collect garbage too (a few tenths of a second)."""
    import keras

    keras.backend.clear_session(free_memory=free_memory)
    if configure.cache_info().currsize and configure().mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")


def _device_info(tf: Any, keras: Any, gpus: list[Any], mixed: bool,
                 notes: list[str]) -> DeviceInfo:
    return DeviceInfo(
        kind="GPU" if gpus else "CPU",
        names=tuple(_gpu_name(tf, g) for g in gpus),
        tensorflow=tf.__version__,
        keras=keras.__version__,
        mixed_precision=mixed,
        replicas=max(1, len(gpus)),
        notes=tuple(notes),
    )


def distribution_strategy() -> Any:
    """MirroredStrategy across several GPUs; TensorFlow's default strategy otherwise."""
    import tensorflow as tf

    info = configure()
    if info.kind == "GPU" and info.replicas > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def describe() -> DeviceInfo:
    """The hardware and the settings `configure()` uses (or has used) in this process,
    without changing any TensorFlow setting."""
    if configure.cache_info().currsize:
        return configure()  # configured already: report it, notes included
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return _device_info(tf, keras, gpus, _uses_mixed_precision(tf, gpus), [])
