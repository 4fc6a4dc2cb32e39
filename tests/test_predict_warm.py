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
