"""Folder uploads from a browser (relative paths + bytes), the generated sample, and spec
normalisation that keeps identical work identical."""

from __future__ import annotations

import io

from PIL import Image

import tl_engine as tle


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_folder_upload_keeps_layout_split_and_skips_unsafe_paths(workspace):
    files = []
    for split, n in (("train", 3), ("val", 2)):
        for label, colour in (("cats", (200, 10, 10)), ("dogs", (10, 10, 200))):
            for i in range(n):
                shade = (colour[0] + i * 5 + (split == "val") * 20, colour[1], colour[2])
                files.append((f"pets/{split}/{label}/{i}.jpg", _jpeg(shade)))
    files.append(("../escape/evil.jpg", _jpeg((1, 2, 3))))
    files.append(("pets/.DS_Store", b"junk"))
    dataset = tle.ingest_tree(workspace, files, project="p")
    assert dataset.name == "pets"
    assert dataset.classes == ("cats", "dogs")
    assert dataset.has_given_split
    split = tle.split_records(dataset)
    assert len(split["train"]) == 6 and len(split["val"]) == 4
    assert [u["file"] for u in dataset.report["unreadable"]] == ["../escape/evil.jpg"]
    assert not (workspace.root.parent / "escape").exists()


def test_generated_sample_is_a_valid_three_class_dataset(workspace):
    uploads = tle.synthetic_shapes(per_class=6, size=48)
    assert len(uploads) == 18 and uploads == tle.synthetic_shapes(per_class=6, size=48)
    dataset = tle.ingest_uploads(workspace, uploads, project="demo")
    assert dataset.classes == ("circle", "square", "triangle")
    assert dataset.report["errors"] == [] and dataset.report["n_images"] == 18


def test_settings_that_do_not_apply_do_not_change_the_cache_key():
    frozen_a = tle.RunSpec(strategy="frozen", unfreeze=5, unfreeze_unit="blocks",
                           head_epochs=7).normalized()
    frozen_b = tle.RunSpec(strategy="frozen").normalized()
    assert frozen_a == frozen_b
    partial = tle.RunSpec(strategy="partial", unfreeze=5, unfreeze_unit="blocks").normalized()
    assert partial.unfreeze == 5 and partial.unfreeze_unit == "blocks"
