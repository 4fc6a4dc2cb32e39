"""The Model page's "Will it transfer?" section through AppTest on a real workspace: the
probe button queues probe jobs (live progress while they run), the ranked table follows,
and "Use this backbone" makes a row the draft's model."""

from __future__ import annotations

from conftest import PROJECT_ROOT, open_app, texts
from streamlit.testing.v1 import AppTest

import tl_engine as tle
from tl_engine.jobs import wait_for_run

DRAFT = {"backbone": "MobileNet-0.25", "weights": "none", "image_size": 32, "epochs": 1,
         "batch_size": 8}


def test_probe_table_and_use_this_backbone(monkeypatch, demo_ws, keras_home):
    monkeypatch.setenv("TL_WORKSPACE", str(demo_ws.root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.query_params["project"] = "demo"
    at.session_state["spec_draft"] = tle.RunSpec(**DRAFT).to_dict()
    at.run()
    at.switch_page("views/model.py").run()
    assert not at.exception, at.exception
    assert "Will it transfer?" in texts(at.subheader)
    assert "No probe on this dataset yet." in texts(at.caption)
    # Both backbones of the Keras cache, each with its random reference; the draft's own
    # (MobileNet-0.25, random init) is among them.
    start = at.button(key="probe_start")
    assert start.label == "Probe 4 models"

    start.click().run()
    assert not at.exception, at.exception
    dataset = tle.list_datasets(demo_ws, "demo")[0]
    jobs = tle.probe_jobs(demo_ws, dataset.id)
    assert len(jobs) == 4 and {j.kind for j in jobs} == {"probe"}
    assert {(j.spec.backbone, j.spec.weights, j.spec.image_size) for j in jobs} == {
        ("MobileNetV2-0.35", "imagenet", 32), ("MobileNetV2-0.35", "none", 32),
        ("MobileNet-0.25", "imagenet", 32), ("MobileNet-0.25", "none", 32)}
    if any(j.is_active for j in jobs):  # live progress, one bar per active probe
        assert any("MobileNet" in str(p.proto.text) for p in at.get("progress"))
    for job in jobs:
        assert wait_for_run(demo_ws, job.id, timeout_s=300).status == "completed"

    at.run()
    assert not at.exception, at.exception
    rows = tle.probe_table(demo_ws, dataset.id)
    markdown = texts(at.markdown)
    assert "**MobileNetV2-0.35** · ImageNet · 32 px" in markdown
    assert "**MobileNet-0.25** · none (random init) · 32 px" in markdown
    assert f"probe **{rows[0].probe_accuracy:.2f}**" in markdown
    assert "ranked by LogME evidence" in texts(at.caption)
    assert "pretraining is worth" in texts(at.caption)
    # The draft's own model is marked, not offered again.
    own = next(r for r in rows if (r.backbone, r.weights) == ("MobileNet-0.25", "none"))
    assert at.button(key=f"probe_use_{own.run_id}").disabled

    chosen = next(r for r in rows if (r.backbone, r.weights) == ("MobileNetV2-0.35",
                                                                  "imagenet"))
    at.button(key=f"probe_use_{chosen.run_id}").click().run()
    assert not at.exception, at.exception
    draft = at.session_state["spec_draft"]
    assert (draft["backbone"], draft["weights"], draft["image_size"]) == (
        "MobileNetV2-0.35", "imagenet", 32)
    assert at.selectbox(key="model_backbone").value == "MobileNetV2-0.35"
    assert at.radio(key="model_weights_source").value == "imagenet"
    assert "The draft now uses MobileNetV2-0.35" in texts(at.success)
    assert at.button(key=f"probe_use_{chosen.run_id}").disabled
    # A second click on the probe button reuses every stored probe.
    at.button(key="probe_start").click().run()
    assert len(tle.probe_jobs(demo_ws, dataset.id)) == 4


def test_model_page_without_a_dataset_says_what_to_do(monkeypatch, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    ws.ensure_project("empty")
    at = open_app(monkeypatch, ws.root, project="empty", page="views/model.py")
    assert "Add a dataset to score the backbones" in texts(at.caption)
