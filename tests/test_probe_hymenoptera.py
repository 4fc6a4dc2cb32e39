"""The probe on the ants/bees photos: ImageNet weights rank clearly above their random-init
reference, and the probe's order predicts the order of real frozen training (Kendall tau
over every backbone with weights here, plus the random references)."""

from __future__ import annotations

import json
import os

import pytest

from tl_engine import runs
from tl_engine.jobs import submit_run, worker_main
from tl_engine.probe import probe_table
from tl_engine.runs import RunStatus
from tl_engine.spec import RunSpec
from tl_engine.store import Workspace
from tl_engine.transfer_scores import kendall_tau

pytestmark = pytest.mark.slow

SIZE = 96  # small and fast on two cores; ImageNet features still tell ants from bees
EXTRA_WEIGHTS = "mobilenet_v2_1.0_224_from_coral_quant_no_top.weights.h5"


@pytest.fixture(scope="module")
def probed(hymenoptera, shared_dir, tmp_path_factory):
    """`probe --json` over the backbones with weights here: the two in the Keras cache and
    MobileNetV2-1.0 from the administrator's weights folder, each with its reference."""
    from tl_engine.cli import main

    assert (shared_dir / "weights" / "keras_home" / "models").is_dir()
    extra = shared_dir / "weights" / "extra"
    if not (extra / EXTRA_WEIGHTS).is_file():
        pytest.skip(f"{EXTRA_WEIGHTS} not in {extra}")
    root = tmp_path_factory.mktemp("probe") / "ws"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TL_WEIGHTS_DIR", str(extra))
        import io
        from contextlib import redirect_stdout

        out = io.StringIO()
        with redirect_stdout(out):
            code = main(["--workspace", str(root), "probe", "--data", str(hymenoptera),
                         "--project", "ants", "--image-size", str(SIZE), "--no-progress",
                         "--backbones", f"MobileNetV2-0.35,MobileNet-0.25,"
                                        f"MobileNetV2-1.0:{EXTRA_WEIGHTS}", "--json"])
    assert code == 0, out.getvalue()
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    return Workspace(root), result


def _row(rows, backbone, weights):
    return next(r for r in rows if r["backbone"] == backbone and
                (r["weights"] == weights or os.path.basename(r["weights"]) == weights))


def test_cli_rows_cover_every_backbone_and_its_reference(probed):
    _, result = probed
    rows = result["rows"]
    assert len(rows) == 6
    for row in rows:
        assert {"backbone", "weights", "probe_accuracy", "knn_accuracy", "evidence",
                "seconds"} <= set(row)
        assert row["n_images"] == 398 and row["image_size"] == SIZE
    assert {os.path.basename(r["weights"]) for r in rows} == {"imagenet", "none",
                                                              EXTRA_WEIGHTS}
    assert [r["evidence"] for r in rows] == sorted((r["evidence"] for r in rows), reverse=True)


def test_imagenet_weights_rank_clearly_above_random_init(probed):
    _, result = probed
    pretrained = _row(result["rows"], "MobileNetV2-0.35", "imagenet")
    reference = _row(result["rows"], "MobileNetV2-0.35", "none")
    print(f"\nMobileNetV2-0.35 at {SIZE} px on ants/bees: ImageNet probe "
          f"{pretrained['probe_accuracy']:.3f} kNN {pretrained['knn_accuracy']:.3f} evidence "
          f"{pretrained['evidence']:.3f} ({pretrained['seconds']:.1f} s) · random init probe "
          f"{reference['probe_accuracy']:.3f} kNN {reference['knn_accuracy']:.3f} evidence "
          f"{reference['evidence']:.3f}")
    assert pretrained["probe_accuracy"] >= reference["probe_accuracy"] + 0.15
    assert pretrained["knn_accuracy"] >= reference["knn_accuracy"] + 0.1
    assert pretrained["evidence"] >= reference["evidence"] + 0.1


def test_probe_order_predicts_frozen_training(probed):
    ws, result = probed
    dataset_id = result["dataset_id"]
    trained = {}
    for row in result["rows"]:
        spec = RunSpec(backbone=row["backbone"], weights=row["weights"], image_size=SIZE,
                       strategy="frozen", epochs=10, seed=42)
        submission = submit_run(ws, "ants", dataset_id, spec, start_worker=False)
        trained[(row["backbone"], row["weights"])] = submission.run_id
    worker_main(ws)
    accuracy = {}
    for key, run_id in trained.items():
        run = runs.get_run(ws, run_id)
        assert run.status == RunStatus.COMPLETED, run.error
        assert run.summary["features_reused"] == 398  # the probe's features, cached
        accuracy[key] = run.val_accuracy
    table = probe_table(ws, dataset_id)
    trained_acc = [accuracy[(r.backbone, r.weights)] for r in table]
    tau_evidence = kendall_tau([r.evidence for r in table], trained_acc)
    tau_probe = kendall_tau([r.probe_accuracy for r in table], trained_acc)
    tau_knn = kendall_tau([r.knn_accuracy for r in table], trained_acc)
    print(f"\nants/bees at {SIZE} px, frozen training 10 epochs vs the probe:")
    for r, acc in zip(table, trained_acc, strict=True):
        print(f"  {r.backbone:17s} {r.weights_label:12.12s} evidence {r.evidence:7.3f} "
              f"probe {r.probe_accuracy:.3f} kNN {r.knn_accuracy:.3f} "
              f"probe {r.seconds:5.1f} s · trained val {acc:.3f} in {r.train_seconds:.1f} s")
    print(f"Kendall tau vs frozen training: evidence {tau_evidence:.2f}, probe accuracy "
          f"{tau_probe:.2f}, kNN {tau_knn:.2f} ({len(table)} models)")
    # Every pretrained model ranks above every random-init one, in both orders.
    ranked = [r.weights == "none" for r in table]
    assert ranked == sorted(ranked)
    assert tau_evidence > 0.3 and tau_probe > 0.3
    assert all(r.train_run_id == trained[(r.backbone, r.weights)] for r in table)
