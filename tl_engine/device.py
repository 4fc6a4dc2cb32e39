"""Which hardware trains: GPUs (memory growth, mixed precision, MirroredStrategy), else CPU.

`describe()` only looks; `configure()` changes TensorFlow's process-wide settings, once,
and is called by whatever is about to use TensorFlow for real (training, the dashboard).
A job then asks `use_precision` for its own dtype policy and `inference_batch_size` for
the batch its inference passes run at.

The GPU choices follow what the network costs on one (bench/gpu_compute.py; figures in
BENCHMARKS-GPU.md, an H200, under Keras on JAX): mixed float16 made fine-tuning 1.1-1.4x
as fast from batch 256 (MobileNetV2-0.35, ResNet50), but 0.6-0.7x as fast at batch 32 and
0.96x at 128 (loss scaling and casts outweigh the smaller arithmetic); a pass fed uint8
pixels from host memory ran 2x as fast at batch 256 as at 32 (512 added 11%), and uint8
pixels ran 1.5-1.9x as fast as float32 ones (a quarter of the bytes to copy).
"""

from __future__ import annotations

import functools
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

# The smallest training batch that gets mixed float16 on a tensor-core GPU (see above).
MIXED_PRECISION_MIN_BATCH = 256
# On a GPU, inference passes (features, activations at a freeze boundary) run at this
# many images of 224 x 224 per batch, or the run's batch if larger; the same count of
# pixels at other sizes, and no more outputs than INFERENCE_OUTPUT_BYTES. Each image's
# outputs are its own whatever the batch (up to the GPU's rounding).
GPU_INFERENCE_BATCH = 256
INFERENCE_OUTPUT_BYTES = 256 * 2**20

@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "GPU" or "CPU"
    names: tuple[str, ...] = ()
    tensorflow: str = ""
    keras: str = ""
    # Tensor-core GPUs: mixed precision for batches of MIXED_PRECISION_MIN_BATCH or more.
    mixed_precision: bool = False
    replicas: int = 1
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        if self.kind == "GPU":
            extra = (f" · mixed precision from batch {MIXED_PRECISION_MIN_BATCH}"
                     if self.mixed_precision else "")
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
    """Mixed float16 can pay off on tensor-core GPUs (compute capability 7.0+), at large
    batches (`precision_policy`); it costs accuracy nowhere because the classifier's
    softmax stays float32."""
    return bool(gpus) and all(_compute_capability(tf, g) >= (7, 0) for g in gpus)


@functools.lru_cache(maxsize=1)
def configure() -> DeviceInfo:
    """Set up TensorFlow for this process once; call before building any model.

    Memory growth lets several processes share a GPU; deterministic ops, so the same run
    gives the same model. The dtype policy is each job's (`use_precision`).
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
    # Before any op runs in the process: kernels chosen earlier would keep their own
    # arithmetic, and the same run would differ in its low bits from worker to worker.
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception as exc:  # not every TF build offers it; results are then only close
        notes.append(f"op determinism not set: {exc}")
    return _device_info(tf, keras, gpus, mixed, notes)


def precision_policy(batch_size: int, info: DeviceInfo | None = None) -> str:
    """The Keras dtype policy for training at `batch_size` on this host's hardware (each of
    several GPUs computes its share of a batch)."""
    info = info or configure()
    if info.mixed_precision and batch_size // info.replicas >= MIXED_PRECISION_MIN_BATCH:
        return "mixed_float16"
    return "float32"


def use_precision(batch_size: int) -> str:
    """Set the dtype policy of the models this job builds next, for training at
    `batch_size`; returns its name (part of the feature caches' keys: float16 features
    differ in their low bits)."""
    import keras

    policy = precision_policy(batch_size)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def inference_batch_size(batch_size: int, image_size: int, values_per_image: int = 0,
                         info: DeviceInfo | None = None) -> int:
    """The batch an inference pass over many images runs at: a GPU is filled (see
    GPU_INFERENCE_BATCH), within INFERENCE_OUTPUT_BYTES of float32 outputs
    (`values_per_image` each); a CPU gains nothing from more than the run's batch but
    memory. Never less than the run's batch."""
    info = info or configure()
    if info.kind != "GPU":
        return batch_size
    fill = GPU_INFERENCE_BATCH * info.replicas * 224 * 224 // max(1, image_size * image_size)
    if values_per_image:
        fill = min(fill, INFERENCE_OUTPUT_BYTES // (4 * values_per_image))
    return max(batch_size, fill, 1)


def reset_precision() -> None:
    """Back to float32 after a job, whatever it left (a job that returned early, a failed
    one): the next job's models and feature keys must not inherit its policy. Loads
    nothing when this process never imported Keras."""
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy("float32")


def inference_pixels(info: DeviceInfo | None = None) -> str:
    """The pixel type inference passes feed their graph: uint8 to a GPU (a quarter of the
    bytes to copy, cast on the device); float32 on a CPU, where nothing is copied and the
    float graph a worker traces ahead of time also serves a run's single-image passes."""
    info = info or configure()
    return "uint8" if info.kind == "GPU" else "float32"


def clear_keras_session(free_memory: bool = True) -> None:
    """Forget the Keras state a job left (layer names, graphs, the dtype policy it set).
    `free_memory`: collect garbage too (a few tenths of a second).

    TensorFlow's kernel cache is kept: Keras's clear_session empties it too, and then the
    next job has TensorFlow optimise again every graph the worker keeps warm (the
    backbone's inference, head_fit's training graph): 0.3 s each, every job. Its entries
    are per op and per graph, not per model's weights."""
    import keras
    from tensorflow.python.eager import context

    tf_context = context.context()
    with _PATCHING:  # one thread at a time puts TensorFlow's method aside, and back
        tf_context.clear_kernel_cache = _keep_kernel_cache  # this call only; see finally
        try:
            keras.backend.clear_session(free_memory=free_memory)
        finally:
            del tf_context.clear_kernel_cache  # the class's own method again
    reset_precision()


# seed_job and clear_keras_session each put a TensorFlow function aside for one call.
_PATCHING = threading.Lock()


def seed_job(seed: int) -> None:
    """`keras.utils.set_random_seed(seed)`: Python's, NumPy's, Keras's and TensorFlow's
    random state for a job. TensorFlow's global seed is set again only when it changes:
    `tf.random.set_seed` also empties TensorFlow's kernel cache, and every job would then
    have TensorFlow prepare again each graph the worker keeps warm (the backbone's
    inference, head_fit's training graph). Nothing the engine runs reads more of
    TensorFlow's random state than that seed: its random ops (tf.data's shuffles, Keras's
    layers and initializers, head_fit's dropout) all take explicit seeds."""
    import keras
    import tensorflow as tf
    from tensorflow.python.eager import context

    with _PATCHING:
        if context.global_seed() != seed:
            keras.utils.set_random_seed(seed)
            return
        set_tf_seed = tf.random.set_seed
        tf.random.set_seed = _seed_already_set  # for this call only; see finally
        try:
            keras.utils.set_random_seed(seed)
        finally:
            tf.random.set_seed = set_tf_seed


def _seed_already_set(seed: int) -> None:
    """What seed_job puts in place of tf.random.set_seed when the seed is unchanged."""


def _keep_kernel_cache() -> None:
    """What clear_keras_session puts in place of TensorFlow's clear_kernel_cache."""


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
