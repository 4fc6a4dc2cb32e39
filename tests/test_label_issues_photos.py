"""Label issues on real photos: 10 % of the ants/bees labels flipped on purpose, then the
precision and recall of the suspects list against what was flipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import tl_engine as tle
from tl_engine.jobs import worker_main

pytestmark = pytest.mark.slow

FLIPPED_SHARE = 0.10


def flip_labels(source: Path, target: Path, share: float, seed: int = 0) -> set[str]:
    """A copy of a train/ val/ tree of class folders with `share` of the files moved to
    the other class's folder; their new relative paths."""
    shutil.copytree(source, target)
    files = sorted(p for p in target.rglob("*") if p.is_file())
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(files), int(round(share * len(files))), replace=False)
    classes = sorted({p.parent.name for p in files})
    moved = set()
    for i in chosen:
        path = files[i]
        other = next(c for c in classes if c != path.parent.name)
        destination = path.parent.parent / other / path.name
        path.rename(destination)
        moved.add(destination.relative_to(target).as_posix())
    return moved


def test_flipped_ant_and_bee_labels_are_found(hymenoptera, keras_home, workspace, tmp_path):
    flipped = flip_labels(hymenoptera, tmp_path / "flipped", FLIPPED_SHARE)
    dataset = tle.ingest_folder(workspace, tmp_path / "flipped", project="insects")
    spec = tle.RunSpec(backbone="MobileNetV2-0.35", weights="imagenet", image_size=128)
    submission = tle.submit_label_issues(workspace, "insects", dataset.id, spec,
                                         start_worker=False)
    worker_main(workspace)
    run = tle.get_run(workspace, submission.run_id)
    assert run.status == "completed", run.error
    found = {s.filename for s in tle.suspects_of(run)}
    hits = len(found & flipped)
    precision, recall = hits / max(1, len(found)), hits / len(flipped)
    print(f"\nlabel issues on ants/bees, {len(flipped)} of {len(dataset.records)} labels "
          f"flipped, MobileNetV2-0.35 ImageNet at 128 px: {len(found)} suspects, precision "
          f"{precision:.2f}, recall {recall:.2f}, probe accuracy "
          f"{run.summary['probe_accuracy']:.3f}, {run.summary['seconds']:.1f} s")
    # Measured 0.63 / 0.65 here; over five other random flips 0.55-0.62 / 0.52-0.70. The
    # small backbone's probe is 85 % right on the clean labels, and its own mistakes are
    # what the list holds besides the flips.
    assert precision >= 0.45 and recall >= 0.5
    # The top of the list is where a person looks first: mostly real flips.
    top = [s.filename for s in tle.suspects_of(run)[:20]]
    assert sum(name in flipped for name in top) >= 10
