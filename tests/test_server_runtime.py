"""The server's script runs stay cheap with TensorFlow loaded: Streamlit's clear_session
after each run no longer triggers a full garbage collection."""

from __future__ import annotations

import gc

import keras

from dashboard import runtime


def test_clear_session_after_a_script_run_collects_no_garbage():
    before = keras.backend.clear_session
    # An AppTest earlier in this process ran app.py, which may have wrapped it already.
    original = before.func if getattr(before, "keeps_memory", False) else before
    keras.backend.clear_session = original
    collections: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    try:
        runtime.skip_garbage_collection_on_keras_clear_session()
        runtime.skip_garbage_collection_on_keras_clear_session()  # idempotent
        patched = keras.backend.clear_session
        assert patched.keeps_memory and patched.func is original
        gc.callbacks.append(record)
        try:
            keras.backend.clear_session()  # what Streamlit calls after every script run
        finally:
            gc.callbacks.remove(record)
        assert 2 not in collections
        # The unpatched function does collect: the test sees a difference.
        gc.callbacks.append(record)
        try:
            original()
        finally:
            gc.callbacks.remove(record)
        assert 2 in collections
    finally:
        keras.backend.clear_session = before
