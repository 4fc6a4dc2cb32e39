"""Ingest from folders, zips and uploads; the health report; splits; storage."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tl_engine.datasets import (
    Dataset,
    HealthReport,
    Upload,
    check_data,
    check_health,
    delete_dataset,
    ingest_folder,
    ingest_uploads,
    ingest_zip,
    list_datasets,
    load_dataset,
    split_records,
)
from tl_engine.errors import DatasetError, NotFound, SpecError

_seed = iter(range(10**6))


def image_bytes(
    fmt: str = "JPEG", size: tuple[int, int] = (48, 36), mode: str = "RGB", **options
) -> bytes:
    """A real image with unique noise, so no two calls give the same bytes."""
    rng = np.random.default_rng(next(_seed))
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    if mode != "RGB":
        img = img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_classes(root: Path, counts: dict[str, int]) -> Path:
    for label, count in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write(root / label / f"{label}_{i:02d}.jpg", image_bytes())
    return root


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
    }


def dataset_rows(ws) -> int:
    return ws.query("SELECT COUNT(*) AS n FROM datasets")[0]["n"]


# --- ingest and storage --------------------------------------------------------------


def test_folder_of_every_format_and_mode_is_stored_as_rgb_jpeg(workspace, tmp_path) -> None:
    root = tmp_path / "mixed"
    for fmt, ext in [
        ("JPEG", "jpg"),
        ("PNG", "png"),
        ("BMP", "bmp"),
        ("GIF", "gif"),
        ("WEBP", "webp"),
        ("TIFF", "tif"),
    ]:
        write(root / "formats" / f"a.{ext}", image_bytes(fmt))
    write(root / "modes" / "cmyk.jpg", image_bytes("JPEG", mode="CMYK"))
    write(root / "modes" / "gray.png", image_bytes("PNG", mode="L"))
    write(root / "modes" / "bits.png", image_bytes("PNG", mode="1"))
    write(root / "modes" / "alpha.png", image_bytes("PNG", mode="RGBA"))
    write(root / "modes" / "gray_alpha.png", image_bytes("PNG", mode="LA"))
    write(root / "modes" / "palette.png", image_bytes("PNG", mode="P", transparency=0))
    deep = np.arange(48 * 36, dtype=np.uint16).reshape(36, 48) * 30
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, format="PNG")
    write(root / "modes" / "sixteen.png", buffer.getvalue())

    dataset = ingest_folder(workspace, root)

    assert dataset.classes == ("formats", "modes")
    assert dataset.counts() == {"formats": 6, "modes": 7}
    assert dataset.report["unreadable"] == []
    for record in dataset.records:
        assert (record.width, record.height) == (48, 36)
        stored = Image.open(workspace.image_path(record.hash))
        assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", (48, 36))
    assert dataset.id.startswith("d") and len(dataset.id) == 13
    manifest = workspace.dataset_dir(dataset.id) / "manifest.json"
    assert manifest.is_file()


def test_exif_rotation_is_stored(workspace, tmp_path) -> None:
    make_classes(tmp_path / "src", {"a": 2, "b": 2})
    img = Image.new("RGB", (60, 30), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    write(tmp_path / "src" / "a" / "sideways.jpg", b"")
    img.save(tmp_path / "src" / "a" / "sideways.jpg", exif=exif)

    dataset = ingest_folder(workspace, tmp_path / "src")

    (record,) = [r for r in dataset.records if r.filename == "a/sideways.jpg"]
    assert (record.width, record.height) == (30, 60)
    assert Image.open(workspace.image_path(record.hash)).size == (30, 60)


def test_large_images_are_stored_shrunk_with_original_size_recorded(workspace, tmp_path) -> None:
    make_classes(tmp_path / "src", {"a": 2, "b": 2})
    write(tmp_path / "src" / "b" / "big.png", image_bytes("PNG", size=(1024, 700)))
    dataset = ingest_folder(workspace, tmp_path / "src")
    (record,) = [r for r in dataset.records if r.filename == "b/big.png"]
    assert (record.width, record.height) == (1024, 700)
    assert Image.open(workspace.image_path(record.hash)).size == (512, 350)
    assert dataset.report["sizes"]["max_width"] == 1024


@pytest.mark.bad_input
def test_unreadable_files_are_reported_and_the_rest_ingested(workspace, tmp_path) -> None:
    root = make_classes(tmp_path / "src", {"ants": 3, "bees": 3})
    good = image_bytes("JPEG", size=(120, 90))
    write(root / "bees" / "cut.jpg", good[: len(good) // 2])
    write(root / "bees" / "x.jpg", b"this is a text file\n")

    dataset = ingest_folder(workspace, root)

    assert dataset.counts() == {"ants": 3, "bees": 3}
    unreadable = {item["file"]: item["reason"] for item in dataset.report["unreadable"]}
    assert set(unreadable) == {"bees/cut.jpg", "bees/x.jpg"}
    assert "truncated" in unreadable["bees/cut.jpg"]
    assert unreadable["bees/x.jpg"].startswith("not an image file Pillow can read")
    assert any("2 file(s) could not be used" in w for w in dataset.report["warnings"])


@pytest.mark.bad_input
def test_decompression_bomb_is_rejected_with_pixel_counts(workspace, tmp_path, monkeypatch) -> None:
    root = make_classes(tmp_path / "src", {"a": 2, "b": 2})
    write(root / "a" / "huge.png", image_bytes("PNG", size=(300, 200)))
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "50000")

    dataset = ingest_folder(workspace, root)

    (item,) = dataset.report["unreadable"]
    assert item["file"] == "a/huge.png"
    assert "60,000 pixels" in item["reason"] and "50,000" in item["reason"]
    assert dataset.counts() == {"a": 2, "b": 2}


def test_nested_folders_belong_to_their_class_and_junk_is_ignored(workspace, tmp_path) -> None:
    root = make_classes(tmp_path / "flowers" / "flowers", {"daisy": 2, "rose": 2})
    write(root / "rose" / "more" / "deep.jpg", image_bytes())
    write(root / "rose" / ".DS_Store", b"junk")
    write(root / "rose" / "Thumbs.db", b"junk")
    write(root / ".hidden" / "x.jpg", image_bytes())

    dataset = ingest_folder(workspace, tmp_path / "flowers")

    assert dataset.classes == ("daisy", "rose")
    assert dataset.counts() == {"daisy": 2, "rose": 3}
    assert "flowers/rose/more/deep.jpg" in {r.filename for r in dataset.records}
    assert dataset.report["unreadable"] == []
    assert dataset.name == "flowers"


def test_uploads_use_stripped_labels_and_report_missing_ones(workspace) -> None:
    uploads = [Upload(f"cat{i}.jpg", image_bytes(), "  cat ") for i in range(2)]
    uploads += [Upload(f"dog{i}.png", image_bytes("PNG"), "dog") for i in range(2)]
    uploads.append(Upload("who.jpg", image_bytes(), "   "))

    dataset = ingest_uploads(workspace, uploads, project="pets")

    assert dataset.classes == ("cat", "dog")
    assert dataset.project == "pets" and dataset.name == "uploads"
    assert not dataset.has_given_split
    (item,) = dataset.report["unreadable"]
    assert item["file"] == "who.jpg" and "no label" in item["reason"]
    assert "data" not in repr(uploads[0])


# --- zips ----------------------------------------------------------------------------


def test_zip_with_a_top_folder_and_mac_junk(workspace, tmp_path) -> None:
    members = {f"photos/{label}/{i}.jpg": image_bytes() for label in ("a", "b") for i in range(2)}
    members["__MACOSX/photos/a/._0.jpg"] = b"resource fork"
    members["photos/.DS_Store"] = b"junk"
    path = write(tmp_path / "photos.zip", make_zip(members))

    dataset = ingest_zip(workspace, path)

    assert dataset.classes == ("a", "b")
    assert {r.filename for r in dataset.records} == {
        m for m in members if m.endswith(".jpg") and not m.startswith("__")
    }
    assert dataset.report["unreadable"] == [] and dataset.name == "photos"
    again = ingest_zip(workspace, path.read_bytes(), name="photos again")
    assert again.id == dataset.id


@pytest.mark.bad_input
def test_zip_slip_members_are_skipped_and_nothing_lands_outside(workspace, tmp_path) -> None:
    members = {f"{label}/{i}.jpg": image_bytes() for label in ("a", "b") for i in range(2)}
    members["../evil.jpg"] = image_bytes()
    members["/abs.jpg"] = image_bytes()
    members["a/../../evil2.jpg"] = image_bytes()
    members["..\\evil3.jpg"] = image_bytes()
    archive = write(tmp_path / "in" / "slip.zip", make_zip(members))
    outside = tmp_path.parent
    before = {p for p in snapshot(outside) if not p.startswith(f"{tmp_path.name}/ws")}

    dataset = ingest_zip(workspace, archive)

    after = {p for p in snapshot(outside) if not p.startswith(f"{tmp_path.name}/ws")}
    assert after == before
    assert not Path("/abs.jpg").exists()
    assert not (Path.cwd().parent / "evil.jpg").exists()
    assert dataset.counts() == {"a": 2, "b": 2}
    unsafe = {i["file"] for i in dataset.report["unreadable"] if "unsafe path" in i["reason"]}
    assert unsafe == {"../evil.jpg", "/abs.jpg", "a/../../evil2.jpg", "..\\evil3.jpg"}


@pytest.mark.bad_input
def test_zip_over_the_declared_size_limit_is_refused(workspace, tmp_path, monkeypatch) -> None:
    members = {f"{label}/{i}.jpg": image_bytes() for label in ("a", "b") for i in range(2)}
    archive = write(tmp_path / "big.zip", make_zip(members))
    monkeypatch.setenv("TL_MAX_ARCHIVE_BYTES", "1000")
    with pytest.raises(DatasetError, match=r"big\.zip would unpack to .* over the limit of 1,000"):
        ingest_zip(workspace, archive)
    assert dataset_rows(workspace) == 0


@pytest.mark.bad_input
def test_compression_bomb_member_is_skipped(workspace, tmp_path) -> None:
    members = {f"{label}/{i}.jpg": image_bytes() for label in ("a", "b") for i in range(2)}
    members["a/bomb.bmp"] = bytes(11 * 1024 * 1024)
    dataset = ingest_zip(workspace, make_zip(members), name="bomb.zip")
    (item,) = dataset.report["unreadable"]
    assert item["file"] == "a/bomb.bmp" and "compression bomb" in item["reason"]
    assert dataset.counts() == {"a": 2, "b": 2}


@pytest.mark.bad_input
def test_not_a_zip_is_a_dataset_error_naming_the_file(workspace, tmp_path) -> None:
    fake = write(tmp_path / "holiday.zip", b"PK but not really a zip archive")
    with pytest.raises(DatasetError, match=r"holiday\.zip is not a readable \.zip"):
        ingest_zip(workspace, fake)
    with pytest.raises(DatasetError, match=r"upload\.zip is not a readable \.zip"):
        ingest_zip(workspace, b"garbage", name="upload.zip")
    with pytest.raises(DatasetError, match="no such file"):
        ingest_zip(workspace, tmp_path / "missing.zip")
    # One photo given where the data goes: what --data expects is said.
    photo = write(tmp_path / "photo.jpg", image_bytes())
    with pytest.raises(DatasetError, match="photo.jpg is neither a folder nor a .zip archive: "
                       "give a folder with one sub-folder of images per class"):
        ingest_zip(workspace, photo)


# --- the health report's errors and warnings ------------------------------------------


def test_one_class_is_an_error(workspace, tmp_path) -> None:
    root = make_classes(tmp_path / "src", {"ants": 4})
    with pytest.raises(DatasetError) as caught:
        ingest_folder(workspace, root)
    assert "found 1 class 'ants': a classifier needs at least 2" in str(caught.value)
    assert caught.value.report["n_images"] == 4
    assert dataset_rows(workspace) == 0


def test_class_with_one_image_and_empty_class_are_errors(workspace, tmp_path) -> None:
    root = make_classes(tmp_path / "src", {"ants": 3, "bees": 1})
    (root / "wasps").mkdir()
    with pytest.raises(DatasetError) as caught:
        ingest_folder(workspace, root)
    message = str(caught.value)
    assert "class 'bees' has only 1 usable image" in message
    assert "class 'wasps' has no usable images" in message
    assert "'ants'" not in message
    assert caught.value.report["classes"]["wasps"]["count"] == 0


def test_no_class_folders_and_no_readable_images(workspace, tmp_path) -> None:
    write(tmp_path / "flat" / "a.jpg", image_bytes())
    with pytest.raises(DatasetError, match="found no class folders"):
        ingest_folder(workspace, tmp_path / "flat")
    write(tmp_path / "bad" / "a" / "x.jpg", b"nope")
    write(tmp_path / "bad" / "b" / "y.jpg", b"nope")
    with pytest.raises(DatasetError, match="no readable images"):
        ingest_folder(workspace, tmp_path / "bad")


def test_duplicates_within_a_class_are_kept_once(workspace, tmp_path) -> None:
    root = make_classes(tmp_path / "src", {"a": 3, "b": 3})
    write(root / "a" / "copy.jpg", (root / "a" / "a_00.jpg").read_bytes())

    dataset = ingest_folder(workspace, root)

    assert dataset.counts() == {"a": 3, "b": 3}
    (dup,) = dataset.report["duplicates"]
    assert dup["label"] == "a" and dup["files"] == ["a/a_00.jpg", "a/copy.jpg"]
    assert any("kept only once" in w for w in dataset.report["warnings"])


def test_cross_class_duplicates_are_all_excluded(workspace, tmp_path) -> None:
    root = make_classes(tmp_path / "src", {"a": 3, "b": 3})
    write(root / "b" / "same.jpg", (root / "a" / "a_00.jpg").read_bytes())

    dataset = ingest_folder(workspace, root)

    assert dataset.counts() == {"a": 2, "b": 3}
    (dup,) = dataset.report["cross_class_duplicates"]
    assert dup["labels"] == ["a", "b"] and dup["files"] == ["a/a_00.jpg", "b/same.jpg"]
    assert dup["hash"] not in {r.hash for r in dataset.records}
    assert any("all copies were left out" in w for w in dataset.report["warnings"])


def test_small_imbalanced_classes_get_plain_warnings(workspace, tmp_path) -> None:
    root = make_classes(tmp_path / "src", {"big": 13, "rose": 3})
    write(root / "rose" / "tiny.png", image_bytes("PNG", size=(20, 16)))
    report = ingest_folder(workspace, root).report
    text = "\n".join(report["warnings"])
    assert "class 'rose' has 4 images: collect at least 20" in text
    assert "imbalanced: 'big' has 13 images, 'rose' only 4 (3.2x)" in text
    assert "1 image(s) are smaller than 32 px" in text


def test_classes_differing_only_in_case_or_spacing_are_pointed_out(workspace, tmp_path) -> None:
    root = make_classes(tmp_path / "src", {"Cat": 3, "cat": 3, "dog": 3, "Dog ": 3, "owl": 3})
    warnings = ingest_folder(workspace, root).report["warnings"]
    look_alike = [w for w in warnings if "differ only in letter case" in w]
    assert sorted(look_alike) == [
        "classes 'Cat' and 'cat' differ only in letter case or spacing: they train as "
        "different classes; if they are one, move their images into one folder",
        "classes 'Dog ' and 'dog' differ only in letter case or spacing: they train as "
        "different classes; if they are one, move their images into one folder",
    ]
    plain = ingest_folder(workspace, make_classes(tmp_path / "plain", {"cat": 3, "dog": 3}))
    assert not any("letter case" in w for w in plain.report["warnings"])


# --- given splits and splitting --------------------------------------------------------


def test_hymenoptera_keeps_its_train_val_split(workspace, hymenoptera) -> None:
    dataset = ingest_folder(workspace, hymenoptera, project="bugs")

    assert dataset.classes == ("ants", "bees")
    assert dataset.has_given_split and dataset.report["given_split"]
    parts = split_records(dataset, val_split=0.5, test_split=0.1)
    # The given val stays; the test split is carved out of the given train part.
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (221, 153, 24)
    assert dataset.report["classes"]["ants"] == {"count": 194, "train": 124, "val": 70, "test": 0}
    assert {r.split for r in parts["val"]} == {"val"}


def test_validation_folder_name_and_train_only_split(workspace, tmp_path) -> None:
    make_classes(tmp_path / "src" / "train", {"a": 6, "b": 6})
    make_classes(tmp_path / "src" / "validation", {"a": 2, "b": 2})
    dataset = ingest_folder(workspace, tmp_path / "src")
    assert {r.split for r in dataset.records} == {"train", "val"}

    make_classes(tmp_path / "src2" / "train", {"a": 6, "b": 6})
    make_classes(tmp_path / "src2" / "test", {"a": 2, "b": 2})
    carved = split_records(ingest_folder(workspace, tmp_path / "src2"), val_split=0.5)
    assert len(carved["test"]) == 4
    assert {r.label for r in carved["val"]} == {"a", "b"} and len(carved["val"]) == 6
    assert all(r.split == "train" for r in carved["val"])


def test_a_split_folder_alone_holds_the_classes(workspace, tmp_path) -> None:
    """A dataset's train/ (or val/) picked or zipped on its own: its class folders are the
    classes, not one class named after the folder."""
    members = {f"train/{label}/{label}_{i}.jpg": image_bytes()
               for label in ("daisy", "rose") for i in range(3)}
    zipped = ingest_zip(workspace, make_zip(members), project="alone")
    assert zipped.classes == ("daisy", "rose") and not zipped.has_given_split
    assert len(zipped.records) == 6
    make_classes(tmp_path / "pick" / "flowers" / "val", {"ants": 3, "bees": 3})
    picked = ingest_folder(workspace, tmp_path / "pick", project="alone")
    assert picked.classes == ("ants", "bees") and not picked.has_given_split


def test_a_split_named_folder_beside_class_folders_is_named_in_a_warning(workspace,
                                                                         tmp_path) -> None:
    make_classes(tmp_path / "src", {"ants": 3})
    make_classes(tmp_path / "src" / "val", {"ants": 2, "bees": 2})
    dataset = ingest_folder(workspace, tmp_path / "src")
    assert dataset.classes == ("ants", "val")  # as laid out, and said:
    assert ("val/ is read as a class named 'val', although it holds folders (ants/, bees/): "
            "a given split needs a train/ folder beside it — put the class folders in train/ "
            "and val/") in dataset.report["warnings"]


def test_a_copy_in_val_and_test_is_kept_in_val_and_said_so(workspace, tmp_path) -> None:
    make_classes(tmp_path / "src" / "train", {"a": 3, "b": 3})
    make_classes(tmp_path / "src" / "val", {"a": 1, "b": 1})
    twin = image_bytes()
    write(tmp_path / "src" / "val" / "a" / "twin.jpg", twin)
    write(tmp_path / "src" / "test" / "a" / "twin.jpg", twin)
    dataset = ingest_folder(workspace, tmp_path / "src")
    (kept,) = [r for r in dataset.records if r.filename.endswith("twin.jpg")]
    assert kept.split == "val" and kept.filename == "val/a/twin.jpg"
    assert ("1 image(s) appear in more than one split folder of the same class "
            "(test/a/twin.jpg): kept once, in the first of train, val and test that holds "
            "it, so no image is both learned from and scored on; delete the copies from the "
            "other split folders") in dataset.report["warnings"]


def test_stratified_split_is_seeded_and_order_independent(workspace, tmp_path) -> None:
    dataset = ingest_folder(workspace, make_classes(tmp_path / "src", {"a": 10, "b": 5, "c": 2}))

    first = split_records(dataset, val_split=0.2, seed=1)
    assert split_records(dataset, val_split=0.2, seed=1) == first
    assert split_records(dataset, val_split=0.2, seed=2) != first
    shuffled = dataclasses.replace(dataset, records=tuple(reversed(dataset.records)))
    assert split_records(shuffled, val_split=0.2, seed=1) == first

    val = [r.label for r in first["val"]]
    assert sorted(val) == ["a", "a", "b", "c"]
    assert {r.label for r in first["train"]} == {"a", "b", "c"}
    assert first["test"] == []

    three_way = split_records(dataset, val_split=0.2, test_split=0.2, seed=1)
    assert sum(len(v) for v in three_way.values()) == 17
    assert {r.label for r in three_way["test"]} == {"a", "b"}  # 'c' keeps train + val
    with pytest.raises(SpecError):
        split_records(dataset, val_split=0.6, test_split=0.4)


# --- the catalogue ---------------------------------------------------------------------


def test_reingest_returns_the_same_dataset_without_a_new_row(workspace, tmp_path) -> None:
    root = make_classes(tmp_path / "src", {"a": 2, "b": 2})
    first = ingest_folder(workspace, root, name="first")
    second = ingest_folder(workspace, root, name="second")
    assert second == first and second.name == "first"
    assert dataset_rows(workspace) == 1
    other = ingest_folder(workspace, root, project="elsewhere")
    assert other.id != first.id and other.content_hash == first.content_hash
    assert dataset_rows(workspace) == 2


def test_images_already_stored_are_read_again_with_the_same_facts(workspace, tmp_path,
                                                                  monkeypatch) -> None:
    root = make_classes(tmp_path / "src", {"a": 2, "b": 2})
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (90, 40), (0, 90, 200)).save(root / "a" / "sideways.jpg", exif=exif)
    write(root / "b" / "big.png", image_bytes("PNG", size=(700, 300)))
    first = ingest_folder(workspace, root, project="first")

    # Stored images are known by their content: the second ingest reads JPEG headers only.
    again = ingest_folder(workspace, root, project="again")
    assert again.records == first.records and again.report == first.report
    (sideways,) = [r for r in again.records if r.filename == "a/sideways.jpg"]
    assert (sideways.width, sideways.height) == (40, 90)

    # The size limit in force still applies to an image the workspace already holds.
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "3000")
    limited = ingest_folder(workspace, root, project="limited")
    refused = {item["file"]: item["reason"] for item in limited.report["unreadable"]}
    assert "3,600 pixels, over the limit of 3,000" in refused["a/sideways.jpg"]
    assert "210,000 pixels" in refused["b/big.png"]


def test_load_list_and_delete(workspace, tmp_path) -> None:
    older = ingest_folder(workspace, make_classes(tmp_path / "one", {"a": 2, "b": 2}))
    newer = ingest_folder(workspace, make_classes(tmp_path / "two", {"c": 2, "d": 3}))

    loaded = load_dataset(workspace, newer.id)
    assert isinstance(loaded, Dataset) and loaded == newer
    assert hash(loaded) == hash(newer)
    assert loaded.report == newer.report
    assert [d.id for d in list_datasets(workspace, "default")] == [newer.id, older.id]
    assert list_datasets(workspace, "nobody") == []

    with workspace.transaction() as db:
        db.execute(
            "INSERT INTO runs (id, project, dataset_id, spec_json, cache_key, status, created_at)"
            " VALUES ('r1', 'default', ?, '{}', 'k', 'done', 0)",
            (older.id,),
        )
    with pytest.raises(DatasetError, match="used by 1 run") as refused:
        delete_dataset(workspace, older.id)
    assert f"“{older.name}” ({older.id})" in str(refused.value)

    image = workspace.image_path(newer.records[0].hash)
    delete_dataset(workspace, newer.id)
    assert not workspace.dataset_dir(newer.id).exists()
    assert image.exists()  # images are shared by content; only the catalogue entry goes
    with pytest.raises(NotFound, match=newer.id):
        load_dataset(workspace, newer.id)
    with pytest.raises(NotFound):
        delete_dataset(workspace, newer.id)


def test_check_data_writes_nothing_and_reports_errors(tmp_path) -> None:
    root = make_classes(tmp_path / "src", {"a": 3, "b": 1})
    write(root / "a" / "notes.jpg", b"text")
    archive = write(tmp_path / "src.zip", make_zip({"a/1.jpg": image_bytes(), "b/1.jpg": b"x"}))
    before = snapshot(tmp_path)

    report = check_data(root)
    zipped = check_data(archive)

    assert snapshot(tmp_path) == before
    assert report["n_images"] == 4 and report["n_classes"] == 2
    assert [i["file"] for i in report["unreadable"]] == ["a/notes.jpg"]
    assert any("'b' has only 1 usable image" in e for e in report["errors"])
    assert zipped["n_images"] == 1 and "b/1.jpg" in zipped["unreadable"][0]["file"]
    assert check_data(tmp_path / "missing")["errors"]


REPORT_KEYS = ["source", "n_files", "n_images", "n_classes", "classes", "sizes", "unreadable",
               "duplicates", "cross_class_duplicates", "given_split", "warnings", "errors"]


def test_health_report_has_one_shape_for_checks_datasets_and_failures(
    workspace, tmp_path
) -> None:
    root = make_classes(tmp_path / "src", {"a": 3, "b": 2})
    write(root / "b" / "copy.jpg", (root / "b" / "b_00.jpg").read_bytes())
    write(root / "a" / "notes.jpg", b"text")

    health = check_health(root)
    dataset = ingest_folder(workspace, root)
    failed = check_health(tmp_path / "missing")

    assert health.ok and health.n_images == 5 and health.sizes.max_width == 48
    assert health.classes["b"] == {"count": 2, "train": 0, "val": 0, "test": 0}
    assert [item["file"] for item in health.unreadable] == ["a/notes.jpg"]
    assert health.duplicates[0]["files"] == ["b/b_00.jpg", "b/copy.jpg"]
    # The JSON keeps its keys and their order, and reads back to the same report.
    assert list(health.to_dict()) == list(failed.to_dict()) == REPORT_KEYS
    assert list(health.to_dict()["sizes"]) == [
        "min_width", "min_height", "median_width", "median_height", "max_width", "max_height"]
    assert check_data(root) == health.to_dict() == dataset.report
    assert HealthReport.from_dict(health.to_dict()) == health == dataset.health
    assert not failed.ok and failed.n_images == 0 and failed.sizes.max_width == 0
    assert "no such file" in failed.errors[0] and failed.source == str(tmp_path / "missing")
    # to_dict is a copy: changing it leaves the report as it was.
    health.to_dict()["unreadable"].clear()
    assert health.unreadable


def test_a_stored_report_missing_keys_reads_with_empty_values() -> None:
    older = {"source": "photos", "n_images": 4, "errors": [], "warnings": ["few images"]}
    report = HealthReport.from_dict(older)
    assert report.n_images == 4 and report.warnings == ["few images"] and report.ok
    assert report.cross_class_duplicates == [] and report.sizes.median_width == 0

def test_flowers_ingest(workspace, flowers) -> None:
    before = snapshot(flowers)
    dataset = ingest_folder(workspace, flowers)
    assert snapshot(flowers) == before  # the source is only read
    report = dataset.report
    assert report["n_classes"] == 5 and report["n_files"] == 4317
    # The set holds 2 repeated files within a class and 4 images filed under two classes.
    assert len(report["duplicates"]) == 2 and len(report["cross_class_duplicates"]) == 4
    assert report["n_images"] == len(dataset.records) == 4317 - 2 - 8
    assert sum(1 for _ in os.scandir(workspace.images_dir)) > 0


def test_ingesting_a_folder_again_knows_its_unchanged_files_and_rereads_changed_ones(
        workspace, tmp_path, monkeypatch) -> None:
    root = make_classes(tmp_path / "src", {"a": 4, "b": 4})
    first = ingest_folder(workspace, root)
    seen: list[tuple[int, int]] = []
    again = ingest_folder(workspace, root, progress=lambda done, total: seen.append((done, total)))
    assert again.id == first.id
    assert seen[:2] == [(0, 8), (8, 8)]  # all known at once: none read again

    # Rewritten in place to the same size, its modification time put back: still read.
    changed = root / "a" / "a_00.jpg"
    before = changed.stat()
    new_bytes = image_bytes()
    while len(new_bytes) != before.st_size:  # same size, as a careful in-place edit keeps
        new_bytes = image_bytes()
    changed.write_bytes(new_bytes)
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    # A stored copy removed since (doctor --repair, a hand clean-up) is decoded again.
    stored = workspace.image_path(next(r.hash for r in first.records
                                       if r.filename == "b/b_01.jpg"))
    stored.unlink()
    revised = ingest_folder(workspace, root)
    by_name = {r.filename: r.hash for r in revised.records}
    assert by_name["a/a_00.jpg"] == hashlib.sha256(new_bytes).hexdigest()
    assert stored.is_file()
    assert revised.id != first.id

    # A lower pixel limit applies to known files too, naming them.
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DatasetError) as refused:
        ingest_folder(workspace, root)
    assert "a/a_01.jpg" in str(refused.value)


def test_the_same_images_again_bring_this_ingests_report(workspace, tmp_path) -> None:
    root = make_classes(tmp_path / "src", {"a": 3, "b": 3})
    write(root / "a" / "broken.jpg", b"not an image")
    first = ingest_folder(workspace, root)
    assert [u["file"] for u in first.report["unreadable"]] == ["a/broken.jpg"]
    (root / "a" / "broken.jpg").unlink()
    write(root / "b" / "garbage.jpg", os.urandom(500))
    again = ingest_folder(workspace, root)
    assert again.id == first.id  # the same images: the same dataset
    assert [u["file"] for u in again.report["unreadable"]] == ["b/garbage.jpg"]
    assert load_dataset(workspace, first.id).report == again.report  # kept, for every page


def test_a_class_folder_that_cannot_be_read_is_named_not_called_empty(tmp_path) -> None:
    import shutil
    import subprocess
    import sys

    root = make_classes(tmp_path / "src", {"ants": 3, "bees": 3})
    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that allow it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: a folder cannot be made unreadable")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    (root / "ants").chmod(0)
    try:
        done = subprocess.run([*prefix, sys.executable, "-m", "tl_engine", "check-data",
                               "--data", str(root)], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parent.parent)
    finally:
        (root / "ants").chmod(0o755)
    assert "ants/: cannot read the folder (Permission denied)" in done.stdout, done.stdout
    assert "its folder ants/ cannot be read" in done.stdout
    assert "is empty" not in done.stdout
