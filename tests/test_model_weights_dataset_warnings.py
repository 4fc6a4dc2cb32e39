"""The Model page's backbone picker and administrator weights folder, and dataset warnings
that name the files they are about."""

from __future__ import annotations

import itertools
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, TINY_CLASSES, write_color_classes
from PIL import Image
from streamlit.testing.v1 import AppTest

import tl_engine as tle
from tl_engine.errors import DatasetError

CORAL_FILE = "mobilenet_v2_1.0_224_from_coral_quant_no_top.weights.h5"
CORAL_BACKBONE = "MobileNetV2-1.0"  # keras.applications.MobileNetV2(alpha=1.0)
IMAGE_SIDE = 40
_seeds = itertools.count()


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture
def demo_ws(tmp_path: Path) -> tle.Workspace:
    ws = tle.Workspace(tmp_path / "ws")
    data = write_color_classes(tmp_path / "data", TINY_CLASSES, per_class=3)
    tle.ingest_folder(ws, data, project="demo")
    return ws


@pytest.fixture
def coral_weights(shared_dir: Path) -> Path:
    path = shared_dir / "weights" / "extra" / CORAL_FILE
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture
def weights_folder(tmp_path: Path, coral_weights: Path, monkeypatch) -> Path:
    """TL_WEIGHTS_DIR with a copy of the real weights file (a link would lead outside)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copyfile(coral_weights, folder / CORAL_FILE)
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(folder))
    return folder


def open_model_page(monkeypatch, ws: tle.Workspace, draft: dict | None = None) -> AppTest:
    monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.query_params["project"] = "demo"
    if draft is not None:
        at.session_state["spec_draft"] = draft
    at.run()
    at.switch_page("views/model.py").run()
    assert not at.exception, at.exception
    return at


def shown_text(at: AppTest) -> list[str]:
    """Everything the page says in its main area, in order."""
    kinds = ("title", "caption", "markdown", "info", "warning", "error", "success")
    return [f"{kind}: {e.value}" for kind in kinds for e in getattr(at.main, kind)]


def jpeg(path: Path, seed: int, side: int = IMAGE_SIDE) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path


def class_folders(root: Path, layout: dict[str, int]) -> Path:
    """`layout` maps a folder ("train/cats") to how many JPEGs it holds, each unique."""
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            jpeg(root / folder / f"{Path(folder).name}_{i:02d}.jpg", seed=next(_seeds))
    return root


def zip_folder(folder: Path, target: Path, wrapper: str) -> Path:
    """A real .zip of `folder`, its members under one wrapper folder."""
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{wrapper}/{path.relative_to(folder).as_posix()}")
    return target


# --- the backbone picker ----------------------------------------------------------------


def test_backbone_picker_lists_backbones_with_weights_here_first(monkeypatch, demo_ws,
                                                                 keras_home):
    cached = {e.key for e in tle.list_backbones()
              if (keras_home / "models" / e.weights_file).is_file()}
    assert cached == {"MobileNetV2-0.35", "MobileNet-0.25"}  # the shared Keras cache
    at = open_model_page(monkeypatch, demo_ws)

    options = at.selectbox(key="model_backbone").options
    registry_order = [e.key for e in tle.list_backbones()]
    here = [k for k in registry_order if k in cached]
    elsewhere = [k for k in registry_order if k not in cached]  # TL_OFFLINE: no downloads
    assert options == ([f"{k} · weights here" for k in here]
                       + [f"{k} · no weights on this server" for k in elsewhere])
    assert options[:2] == ["MobileNetV2-0.35 · weights here", "MobileNet-0.25 · weights here"]

    at.selectbox(key="model_backbone").select("ResNet50").run()
    assert not at.exception
    assert at.session_state["spec_draft"]["backbone"] == "ResNet50"


# --- the administrator's weights folder -------------------------------------------------


def test_weights_folder_lists_h5_files_by_name_and_no_links_leading_out(
        tmp_path, weights_folder, coral_weights):
    (weights_folder / "a_first.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (weights_folder / "notes.txt").write_text("not weights")
    (weights_folder / "nested").mkdir()
    (weights_folder / "nested" / "deeper.weights.h5").write_bytes(b"x")
    (weights_folder / "outside.weights.h5").symlink_to(coral_weights)
    secret = tmp_path / "secret.h5"
    secret.write_bytes(b"x")
    (weights_folder / "secret_link.h5").symlink_to(secret)
    (weights_folder / "same_file.h5").symlink_to(weights_folder / CORAL_FILE)

    files = tle.list_weight_files()

    assert tle.weights_dir() == weights_folder.resolve()
    assert [f.name for f in files] == ["a_first.h5", CORAL_FILE, "same_file.h5"]
    coral = files[1]
    assert coral.path == weights_folder.resolve() / CORAL_FILE and coral.path.is_absolute()
    assert coral.size == coral_weights.stat().st_size
    assert tle.find_weight_file(str(coral.path)) == coral
    assert tle.find_weight_file(str(coral_weights)) is None
    assert tle.find_weight_file(str(weights_folder / "outside.weights.h5")) is None


def test_no_weights_folder_means_no_weights_files(monkeypatch, tmp_path):
    monkeypatch.delenv("TL_WEIGHTS_DIR", raising=False)
    assert tle.weights_dir() is None and tle.list_weight_files() == []
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path / "not-there"))
    assert tle.list_weight_files() == []


def test_the_listed_file_is_real_weights_for_its_backbone(weights_folder):
    (listed,) = tle.list_weight_files()
    backbone = tle.get_backbone(CORAL_BACKBONE)
    model = tle.weights.load_backbone(backbone, str(listed.path), 96)
    assert model.input_shape == (None, 96, 96, 3)
    assert tle.weights.weights_identity(backbone, str(listed.path), 0).startswith("file:")


def test_without_a_weights_folder_the_page_offers_no_local_file(monkeypatch, demo_ws):
    monkeypatch.delenv("TL_WEIGHTS_DIR", raising=False)
    at = open_model_page(monkeypatch, demo_ws)
    radio = at.radio(key="model_weights_source")
    assert radio.options == ["ImageNet (pretrained)", "None — random init (baseline)"]
    assert "TL_WEIGHTS_DIR" in radio.help
    assert len(at.main.text_input) == 0


def test_choosing_a_file_from_the_folder_stores_its_path_and_shows_its_name(
        monkeypatch, demo_ws, weights_folder):
    at = open_model_page(monkeypatch, demo_ws)
    at.selectbox(key="model_backbone").select(CORAL_BACKBONE).run()
    at.radio(key="model_weights_source").set_value("file").run()
    assert not at.exception

    picker = at.selectbox(key="model_weights_file")
    assert picker.options == [f"{CORAL_FILE} · 9.0 MB"]
    assert picker.value == CORAL_FILE
    draft = at.session_state["spec_draft"]
    assert draft["backbone"] == CORAL_BACKBONE
    assert draft["weights"] == str(weights_folder.resolve() / CORAL_FILE)
    # No field takes a path: nobody can ask the page about files outside the folder.
    assert len(at.main.text_input) == 0
    assert str(weights_folder) not in "\n".join(shown_text(at))

    # Back on the page later (widgets forgotten), the draft's file is chosen again.
    at.switch_page("views/freeze.py").run()
    at.switch_page("views/model.py").run()
    assert at.radio(key="model_weights_source").value == "file"
    assert at.selectbox(key="model_weights_file").value == CORAL_FILE


def test_an_empty_weights_folder_says_so_and_keeps_imagenet(monkeypatch, demo_ws, tmp_path):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path / "empty"))
    at = open_model_page(monkeypatch, demo_ws)
    at.radio(key="model_weights_source").set_value("file").run()
    assert not at.exception
    assert "holds no .h5 files" in "\n".join(str(w.value) for w in at.warning)
    assert at.session_state["spec_draft"]["weights"] == "imagenet"


@pytest.mark.bad_input
def test_a_draft_path_outside_the_folder_falls_back_to_imagenet_revealing_nothing(
        monkeypatch, demo_ws, weights_folder, coral_weights, tmp_path):
    rendered = []
    for outside in (str(coral_weights), str(tmp_path / "no" / "such.h5")):
        draft = tle.RunSpec(backbone=CORAL_BACKBONE, weights=outside).to_dict()
        at = open_model_page(monkeypatch, demo_ws, draft=draft)
        assert at.radio(key="model_weights_source").value == "imagenet"
        assert at.session_state["spec_draft"]["weights"] == "imagenet"
        assert "not offered on this server" in "\n".join(str(i.value) for i in at.info)
        rendered.append(shown_text(at))
    # An existing file and a missing one look exactly alike.
    assert rendered[0] == rendered[1]


# --- dataset warnings name the files --------------------------------------------------


def split_tree(root: Path) -> Path:
    class_folders(root, {"train/cats": 3, "train/dogs": 3, "val/cats": 2, "val/dogs": 2})
    (root / "train" / "vectorize.py").write_text("import numpy\n")
    return root


def messages(report: dict) -> str:
    return "\n".join(report["errors"] + report["warnings"])


@pytest.mark.bad_input
def test_a_script_at_the_top_of_a_split_folder_is_named_as_not_an_image(workspace, tmp_path):
    root = split_tree(tmp_path / "pets")

    dataset = tle.ingest_folder(workspace, root)

    text = messages(dataset.report)
    assert "ignored: not an image (train/vectorize.py)" in text
    assert "class folder, e.g." not in text  # nothing suggests it is a misplaced photo
    assert dataset.counts() == {"cats": 5, "dogs": 5}


@pytest.mark.bad_input
def test_a_stray_non_image_at_the_root_is_named(workspace, tmp_path):
    root = class_folders(tmp_path / "pets", {"cats": 2, "dogs": 2})
    (root / "labels.csv").write_text("file,label\n")
    text = messages(tle.check_data(root))
    assert "ignored: not an image (labels.csv)" in text


def test_an_image_at_the_top_of_a_split_folder_is_named_with_where_to_move_it(
        workspace, tmp_path):
    root = split_tree(tmp_path / "pets")
    jpeg(root / "val" / "stray.jpg", seed=10_001)

    text = messages(tle.ingest_folder(workspace, root).report)

    assert ("ignored: image not in a class folder (val/stray.jpg) — move each image into its "
            "class folder, e.g. val/cats/stray.jpg") in text
    assert "ignored: not an image (train/vectorize.py)" in text


@pytest.mark.bad_input
def test_a_readme_inside_a_class_folder_is_named_with_its_reason(workspace, tmp_path):
    root = class_folders(tmp_path / "pets", {"cats": 2, "dogs": 2})
    (root / "cats" / "README.txt").write_text("photos from the shelter\n")

    dataset = tle.ingest_folder(workspace, root)

    assert [u["file"] for u in dataset.report["unreadable"]] == ["cats/README.txt"]
    text = messages(dataset.report)
    assert "1 file(s) could not be used and were skipped — cats/README.txt: not an image" in text


@pytest.mark.bad_input
def test_an_empty_class_folder_is_named(workspace, tmp_path):
    root = split_tree(tmp_path / "pets")
    (root / "train" / "birds").mkdir()
    with pytest.raises(DatasetError) as caught:
        tle.ingest_folder(workspace, root)
    assert ("class 'birds' has no usable images: its folder train/birds/ is empty — add at "
            "least 2 images or remove the folder") in str(caught.value)


@pytest.mark.bad_input
def test_a_single_class_says_where_the_others_go(workspace, tmp_path):
    root = class_folders(tmp_path / "pets", {"cats": 3})
    with pytest.raises(DatasetError) as caught:
        tle.ingest_folder(workspace, root)
    assert ("found 1 class 'cats': a classifier needs at least 2 — add a folder for each "
            "other class next to cats/") in str(caught.value)


def test_a_zip_names_its_members_with_their_folders(workspace, tmp_path):
    root = split_tree(tmp_path / "pets")
    jpeg(root / "train" / "loose.jpg", seed=10_002)
    (root / "train" / "cats" / "README.txt").write_text("shelter photos\n")
    (root / "train" / "birds").mkdir()
    (root / "train" / "birds" / "notes.txt").write_text("no birds yet\n")
    archive = zip_folder(root, tmp_path / "pets.zip", wrapper="pets")

    report = tle.check_data(archive)

    text = messages(report)
    assert "ignored: not an image (pets/train/vectorize.py)" in text
    assert "ignored: image not in a class folder (pets/train/loose.jpg)" in text
    assert "e.g. pets/train/birds/loose.jpg" in text  # the first class by name
    assert ("class 'birds' has no usable images: none of its files could be used "
            "(pets/train/birds/notes.txt, see the unreadable list)") in text
    assert "pets/train/cats/README.txt: not an image" in text
    with pytest.raises(DatasetError, match="pets/train/birds/notes.txt"):
        tle.ingest_zip(workspace, archive)


def test_many_files_are_named_a_few_at_a_time(workspace, tmp_path):
    root = class_folders(tmp_path / "pets", {"cats": 2, "dogs": 2})
    for name in ("a.py", "b.py", "c.py", "d.py", "e.py"):
        (root / name).write_text("print()\n")
    text = messages(tle.check_data(root))
    assert "ignored: not an image (a.py, b.py, c.py and 2 more)" in text


def test_duplicates_and_small_images_are_named(workspace, tmp_path):
    root = class_folders(tmp_path / "pets", {"cats": 3, "dogs": 3})
    shutil.copyfile(root / "cats" / "cats_00.jpg", root / "cats" / "copy.jpg")
    jpeg(root / "dogs" / "thumb.jpg", seed=10_003, side=16)
    shutil.copyfile(root / "dogs" / "dogs_01.jpg", root / "cats" / "which.jpg")  # both classes

    text = messages(tle.ingest_folder(workspace, root).report)

    assert "1 exact duplicate file(s) within a class were kept only once (cats/copy.jpg" in text
    assert "1 image(s) are smaller than 32 px on a side (dogs/thumb.jpg)" in text
    assert "(2 files: cats/which.jpg, dogs/dogs_01.jpg)" in text
