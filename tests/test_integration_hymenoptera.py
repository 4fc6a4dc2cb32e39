"""The product's promise on real photographs: ImageNet transfer beats random init, identical
work is never redone, and a frozen backbone runs once per image. Through the CLI, as a user
would run it, with the genuine ImageNet weights from the shared folder and no network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _train(data, workspace, *extra: str) -> dict:
    command = [sys.executable, "-m", "tl_engine", "train", "--data", str(data),
               "--backbone", "MobileNetV2-0.35", "--strategy", "frozen", "--epochs", "10",
               "--workspace", str(workspace), "--json", *extra]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_imagenet_transfer_on_hymenoptera(hymenoptera, keras_home, tmp_path):
    workspace = tmp_path / "ws"
    pretrained = _train(hymenoptera, workspace)
    assert pretrained["status"] == "completed" and pretrained["cached"] is False
    assert pretrained["val_accuracy"] >= 0.85
    assert pretrained["features_computed"] == 398  # its own train/val split: 245 + 153

    scratch = _train(hymenoptera, workspace, "--weights", "none")
    assert scratch["val_accuracy"] <= pretrained["val_accuracy"] - 0.15

    again = _train(hymenoptera, workspace)
    assert again["cached"] is True and again["run_id"] == pretrained["run_id"]

    other_head = _train(hymenoptera, workspace, "--hidden-units", "64", "--dropout", "0.3")
    assert other_head["run_id"] != pretrained["run_id"]
    assert other_head["features_computed"] == 0  # the backbone did not run again
    assert other_head["features_reused"] == 398
    assert other_head["val_accuracy"] >= 0.85
