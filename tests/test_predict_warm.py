"""A model is ready as soon as it is chosen: warmed in the background, loaded once, its
forward graph traced once for every batch size, the same answers before and after."""

from __future__ import annotations

import numpy as np


def test_warm_predictor_loads_the_model_load_predictor_then_returns(trained_workspace):
    import tl_engine as tle

    ws, dataset, run = trained_workspace
    warming = tle.warm_predictor(ws, run.id)
    predictor = tle.load_predictor(ws, run.id)  # waits for the load under way
    assert warming.result(timeout=120) is predictor
    assert tle.warm_predictor(ws, run.id).result(timeout=0) is predictor  # already loaded


def test_forward_graph_is_traced_once_and_answers_like_the_first_calls(trained_workspace):
    import tl_engine as tle

    ws, dataset, run = trained_workspace
    images = [ws.image_path(r.hash) for r in dataset.records]
    predictor = tle.load_predictor(ws, run.id)
    early = predictor.predict(images[:3])  # may run before the graph is ready
    assert predictor.wait_until_traced(timeout=120)
    for count in (1, 3, 7, len(images)):
        predictor.predict(images[:count])
    predictor.predict(images * 3)  # more than one model batch
    assert predictor.traces == 1
    late = predictor.predict(images[:3])
    for before, after in zip(early, late, strict=True):
        assert before.label == after.label
        np.testing.assert_allclose([p for _, p in before.top], [p for _, p in after.top],
                                   atol=1e-5)


def test_a_batch_keeps_its_order_with_unreadable_images(trained_workspace):
    import tl_engine as tle

    ws, dataset, run = trained_workspace
    good = [ws.image_path(r.hash) for r in dataset.records[:5]]
    batch = [good[0], ("broken.jpg", b"not an image"), *good[1:], b""]
    predictions = tle.predict_images(ws, run.id, batch)
    assert [p.error is None for p in predictions] == [True, False, True, True, True, True,
                                                      False]
    alone = tle.predict_images(ws, run.id, good)
    assert [p.label for p in predictions if p.error is None] == [p.label for p in alone]


def test_the_first_prediction_checks_the_familiarity_profile_in_its_own_pass(
        trained_workspace):
    """A new Predictor runs nothing until asked: the first prediction carries the profile's
    fingerprint image along, and only then does the graph's tracing start."""
    import threading

    from tl_engine import runs
    from tl_engine.calibration import run_temperature
    from tl_engine.familiarity import load_profile
    from tl_engine.model_file import load_run_model
    from tl_engine.predict import Predictor

    ws, dataset, run = trained_workspace
    images = [ws.image_path(r.hash) for r in dataset.records[:4]]
    run_dir = ws.run_dir(run.id)
    predictor = Predictor(load_run_model(ws, run.id), runs.labels(ws, run.id),
                          run.spec.image_size, run.id, load_profile(run_dir),
                          run_temperature(run_dir))
    tracer = f"tl-trace-{run.id}"
    assert tracer not in {t.name for t in threading.enumerate()}
    first = predictor.predict(images)
    assert all(p.familiarity is not None for p in first)
    assert predictor.profile is not None
    # The first prediction started the tracing: under way, or done already.
    assert (tracer in {t.name for t in threading.enumerate()}
            or predictor.traces == 1)
    assert predictor.wait_until_traced(timeout=120)
    again = predictor.predict(images)
    np.testing.assert_allclose([p.familiarity for p in first],
                               [p.familiarity for p in again], rtol=1e-4, atol=1e-4)
    assert [p.label for p in first] == [p.label for p in again]
