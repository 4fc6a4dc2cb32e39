"""Grad-CAM on a case whose answer is known: a model trained to tell photos with a bright
square from photos without one (both hold a grey disc as a decoy) must put the heat on
the square. The same run serves the explain command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, train_tiny_run
from PIL import Image, ImageDraw

import tl_engine as tle
from tl_engine.datasets import ingest_folder

pytestmark = pytest.mark.slow

SIZE = 224  # MobileNetV2's 7x7 map: each cell 32 px; at 128 px a cell would span 32 of 128
SIDE = SIZE // 4
MARGIN = SIZE // 16  # the square's box, enlarged by this on each side, must hold the heat
MIN_MASS_SHARE = 0.6


def draw(rng: np.random.Generator, square: bool) -> tuple[Image.Image, tuple[int, ...] | None]:
    """A noisy grey photo with a mid-grey disc anywhere and, for the class "square", a
    white square that does not overlap it; the square's box (x0, y0, x1, y1)."""
    pixels = np.clip(rng.normal(90, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    pen = ImageDraw.Draw(image)
    dx, dy = (int(v) for v in rng.integers(8, SIZE - 8 - SIDE, 2))
    pen.ellipse([dx, dy, dx + SIDE, dy + SIDE], fill=(150, 150, 150))
    if not square:
        return image, None
    while True:
        x, y = (int(v) for v in rng.integers(4, SIZE - 4 - SIDE, 2))
        if abs(x - dx) > SIDE or abs(y - dy) > SIDE:
            break
    pen.rectangle([x, y, x + SIDE - 1, y + SIDE - 1], fill=(250, 250, 250))
    return image, (x, y, x + SIDE, y + SIDE)


@pytest.fixture(scope="module")
def square_run(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for label in ("square", "plain"):
        (root / "data" / label).mkdir(parents=True)
        for i in range(60):
            draw(rng, label == "square")[0].save(root / "data" / label / f"{label}_{i:03d}.png")
    ws = tle.Workspace(root / "ws")
    dataset = ingest_folder(ws, root / "data", project="demo")
    # Two-phase, the top 3 blocks fine-tuned: the last map learns where squares are.
    run = train_tiny_run(ws, dataset, weights="imagenet", image_size=SIZE, strategy="two-phase",
                         unfreeze=3, unfreeze_unit="blocks", epochs=8, learning_rate=0.01,
                         batch_size=16)
    assert run.status == "completed" and run.val_accuracy == 1.0, run.error
    # Held-out photos, never seen in training or validation.
    held_out = []
    for i in range(16):
        image, box = draw(rng, square=True)
        path = root / "held_out" / f"square_{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        image.save(path)
        held_out.append((path, box))
    return ws, run, held_out


def test_the_heat_map_sits_on_the_shape(square_run):
    ws, run, held_out = square_run
    shares = []
    for path, (x0, y0, x1, y1) in held_out:
        explanation = tle.explain_image(ws, run.id, path)
        assert explanation.predicted == explanation.class_name == "square"
        heat = explanation.heatmap
        assert heat.shape == (SIZE, SIZE)
        inside = heat[max(0, y0 - MARGIN):y1 + MARGIN, max(0, x0 - MARGIN):x1 + MARGIN].sum()
        shares.append(inside / heat.sum())
    box_area = ((SIDE + 2 * MARGIN) / SIZE) ** 2
    print(f"\nGrad-CAM mass on the square's box (+{MARGIN} px), {len(shares)} held-out "
          f"photos: mean {np.mean(shares):.1%}, min {np.min(shares):.1%}; the box covers "
          f"{box_area:.1%} of the photo")
    assert np.mean(shares) >= MIN_MASS_SHARE


def test_explain_command_writes_the_heat_map_at_the_image_size(square_run, tmp_path):
    ws, run, held_out = square_run
    # A photo of another size than the model's input: the heat map comes back at its size.
    photo = tmp_path / "wide.png"
    Image.open(held_out[0][0]).resize((300, 180)).save(photo)
    out = tmp_path / "out" / "heatmap.png"

    def explain(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tl_engine", "explain", "--workspace", str(ws.root),
             "--run", run.id, str(photo), "--out", str(out), *extra],
            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)

    done = explain()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert "Grad-CAM of 'square'" in done.stdout and "7x7 feature map" in done.stdout
    with Image.open(out) as written:
        assert written.format == "PNG" and written.size == (300, 180)
        first = np.asarray(written.convert("RGB"))

    refused = explain("--class", "plain")
    assert refused.returncode == 2 and "already exists" in refused.stderr
    replaced = explain("--class", "plain", "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert "Grad-CAM of 'plain'" in replaced.stdout
    with Image.open(out) as written:
        assert written.size == (300, 180)
        assert not np.array_equal(np.asarray(written.convert("RGB")), first)

    unknown = explain("--class", "circle", "--force")
    assert unknown.returncode == 2 and "not one of" in unknown.stderr
    inside = subprocess.run(
        [sys.executable, "-m", "tl_engine", "explain", "--workspace", str(ws.root),
         "--run", run.id, str(photo), "--out", str(Path(ws.root) / "heat.png")],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert inside.returncode == 2 and "inside the workspace" in inside.stderr
    assert not (Path(ws.root) / "heat.png").exists()
