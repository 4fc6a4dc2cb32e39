"""What a worker keeps warm between jobs: TensorFlow's prepared graphs, Keras's saving
caches; and the package that imports only what a command uses."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context

import tl_engine
from tl_engine.device import clear_keras_session, seed_job
from tl_engine.model_file import remember_keras_skipsets, save_keras_model
from tl_engine.modeling import build_head

ROOT = Path(__file__).resolve().parent.parent


def _draws() -> tuple[float, float, float]:
    return (random.random(), float(np.random.rand()),
            float(keras.ops.convert_to_numpy(keras.random.uniform((1,)))[0]))


def test_seed_job_seeds_as_keras_does_and_keeps_tensorflows_seed_setter() -> None:
    keras.utils.set_random_seed(5)
    expected = _draws()
    seed_job(5)  # unchanged seed: TensorFlow's is left as it is
    assert _draws() == expected
    assert tf.random.set_seed.__module__.startswith("tensorflow")
    seed_job(6)
    assert context.global_seed() == 6
    keras.utils.set_random_seed(6)
    again = _draws()
    seed_job(6)
    assert _draws() == again


def test_clearing_keras_state_keeps_the_kernel_cache_method_in_place() -> None:
    keras.layers.Dense(2)
    clear_keras_session(free_memory=False)
    assert keras.layers.Dense(2).name == "dense"  # Keras's names start again
    assert "clear_kernel_cache" not in vars(context.context())  # the class's own again


def test_a_model_saved_with_remembered_skip_sets_loads_with_the_same_weights(
        tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    head = build_head(12, 3, 8, 0.1)
    path = tmp_path / "head.keras"
    save_keras_model(head, path)
    from keras.src.backend.common import global_state

    assert global_state.get_global_attribute("saving_attr_skiplist_Layer") is not None
    remember_keras_skipsets()
    loaded = keras.saving.load_model(str(path))
    for mine, theirs in zip(head.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    x = np.random.default_rng(0).standard_normal((4, 12)).astype("float32")
    np.testing.assert_allclose(head(x), loaded(x), rtol=1e-6)


def test_importing_the_package_imports_only_what_is_used() -> None:
    code = ("import json, sys; import tl_engine; "
            "before = sorted(m for m in sys.modules if m.startswith('tl_engine.')); "
            "tl_engine.RunSpec; "
            "print(json.dumps([before, 'numpy' in sys.modules, "
            "'tl_engine.spec' in sys.modules, 'tl_engine.training' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    before, numpy_loaded, spec_loaded, training_loaded = json.loads(out.stdout)
    # `phases` is bound at once: it is also a submodule's name (see the package).
    assert set(before) <= {"tl_engine.phases", "tl_engine.spec", "tl_engine.registry",
                           "tl_engine.errors"}
    assert not numpy_loaded
    assert spec_loaded and not training_loaded
    assert callable(tl_engine.phases)
    for name in tl_engine.__all__:
        assert getattr(tl_engine, name) is not None, name
    assert set(dir(tl_engine)) >= set(tl_engine.__all__)


def test_the_cli_starts_without_numpy_pillow_or_tqdm() -> None:
    """What `python -m tl_engine train --no-progress` imports before it needs an image
    decoded: a folder ingested again, unchanged, decodes nothing."""
    code = ("import json, sys; import tl_engine.cli, tl_engine.jobs; "
            "from tl_engine.datasets import ingest_folder; "
            "print(json.dumps([m for m in ('numpy', 'PIL', 'tqdm', 'h5py', 'tensorflow') "
            "if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert json.loads(out.stdout) == []
