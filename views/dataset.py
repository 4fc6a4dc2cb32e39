"""Dataset: bring photos in (per class, a folder, a .zip or a sample), then see the health
report, the split, which labels look wrong, the dataset as a map and the images
themselves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import streamlit as st

import tl_engine as tle
from dashboard import access, charts, formats, label_views, state, widgets
from dashboard.text import md_escape

PER_PAGE = 24
GRID_COLUMNS = 8
SHOWN_GROUPS = 12  # duplicate groups shown with thumbnails; the rest are counted

ws = state.workspace()
project = state.require_project()
datasets = tle.list_datasets(ws, project)

st.title("Dataset")
st.caption("Photos in, one folder (or upload box) per class. Every file is checked, "
           "de-duplicated and stored once; the report below says what to fix.")

if flash := st.session_state.pop("dataset_flash", None):
    st.success(flash, icon=":material/check_circle:")
access.role_note(project, "upload", "add or delete datasets")

# Bumping the generation gives every uploader a new key: the way to empty them.
gen = st.session_state.setdefault("upload_gen", 0)


# --- ingest --------------------------------------------------------------------------


def show_problems(report: tle.HealthReport, *, errors: bool = True,
                  unreadable: bool = True) -> None:
    for error in report.errors if errors else []:
        st.error(md_escape(error), icon=":material/block:")
    for warning in report.warnings:
        st.warning(md_escape(warning), icon=":material/warning:")
    if unreadable and report.unreadable:
        st.dataframe(pd.DataFrame(report.unreadable), hide_index=True, width="stretch",
                     column_config={"file": "File", "reason": "Why it was skipped"})


def ingest(what: str, make: Callable[[Callable[[int, int], None]], tle.Dataset]) -> None:
    """Run one engine ingest with a progress bar; select the result or show what failed."""
    if not access.permit("upload", project):
        return
    if access.can("train", project):
        # Training usually comes next: a worker loads TensorFlow while the photos are read.
        tle.prewarm_worker(ws)
    bar = st.progress(0.0, text=f"Reading {what}…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=f"Checking images: {done} / {total}")

    known = {d.id for d in datasets}
    try:
        dataset = make(progress)
    except tle.DatasetError as exc:
        bar.empty()
        st.error(f"No dataset was created. {md_escape(exc)}", icon=":material/warning:")
        if report := getattr(exc, "report", None):
            show_problems(tle.HealthReport.from_dict(report), errors=False)
        return
    except tle.TLError as exc:
        bar.empty()
        st.error(md_escape(exc), icon=":material/warning:")
        return
    state.set_dataset(dataset.id)
    if dataset.id in known:
        st.session_state["dataset_flash"] = (
            f"These exact images are already stored as “{md_escape(dataset.name)}” — selected it."
        )
    else:
        st.session_state["dataset_flash"] = (
            f"Created “{md_escape(dataset.name)}”: {len(dataset.records)} images in "
            f"{len(dataset.classes)} classes."
        )
    st.session_state["upload_gen"] = gen + 1
    st.session_state.pop("camera_shots", None)
    st.rerun()


# --- input tabs ----------------------------------------------------------------------


def _add_class() -> None:
    classes = st.session_state["upload_classes"]
    classes.append({"id": max((c["id"] for c in classes), default=0) + 1, "name": ""})


def _remove_class(class_id: int) -> None:
    classes = st.session_state["upload_classes"]
    st.session_state["upload_classes"] = [c for c in classes if c["id"] != class_id]
    shots = st.session_state.get("camera_shots", {})
    for file_id in [f for f, shot in shots.items() if shot["class_id"] == class_id]:
        del shots[file_id]


def _add_shot(class_name: str) -> None:
    # A callback, so the per-class counts above the camera already include this shot.
    shot = st.session_state.get(f"camera_{gen}")
    shots = st.session_state.setdefault("camera_shots", {})
    if shot is not None and shot.file_id not in shots:
        shots[shot.file_id] = {"class_id": st.session_state["camera_class"],
                               "data": shot.getvalue()}
        st.toast(f"Added a shot to {md_escape(class_name)}")


def upload_by_class() -> None:
    classes = st.session_state.setdefault(
        "upload_classes", [{"id": 1, "name": ""}, {"id": 2, "name": ""}]
    )
    shots: dict[str, dict[str, Any]] = st.session_state.setdefault("camera_shots", {})
    st.caption("One row per class. Files stay here until you create the dataset or leave "
               "the page; webcam shots are kept for the whole session.")
    files_by_class: dict[int, list[Any]] = {}
    for i, cls in enumerate(classes):
        with st.container(border=True):
            cols = st.columns([0.28, 0.64, 0.08], vertical_alignment="center")
            widgets.seed(f"class_name_{cls['id']}", cls["name"])
            cls["name"] = cols[0].text_input(
                f"Class {i + 1}", key=f"class_name_{cls['id']}", placeholder="e.g. scratched"
            ).strip()
            files_by_class[cls["id"]] = cols[1].file_uploader(
                f"Photos of class {i + 1}", type=widgets.IMAGE_TYPES, accept_multiple_files=True,
                key=f"class_files_{cls['id']}_{gen}", label_visibility="collapsed",
            ) or []
            n_shots = sum(1 for shot in shots.values() if shot["class_id"] == cls["id"])
            # An icon alone: a worded button would not fit beside the uploader.
            cols[2].button("", key=f"class_remove_{cls['id']}", on_click=_remove_class,
                           args=(cls["id"],), icon=":material/delete:", type="tertiary",
                           disabled=len(classes) <= 2, help=f"Remove class {i + 1}")
            if n_shots:
                st.caption(f"+ {n_shots} webcam shot(s)")
    st.button("Add a class", on_click=_add_class, icon=":material/add:")

    if st.toggle("Add photos from the webcam", key="use_camera"):
        named = {c["id"]: c["name"] or f"Class {i + 1}" for i, c in enumerate(classes)}
        target = st.selectbox("Class for the next shot", list(named), format_func=named.get,
                              key="camera_class")
        st.camera_input("Take a photo", key=f"camera_{gen}", on_change=_add_shot,
                        args=(named[target],))

    cols = st.columns([0.4, 0.6], vertical_alignment="bottom")
    name = cols[0].text_input("Dataset name", value="uploads", key="upload_dataset_name")
    if access.guarded_button(cols[1], "Create dataset", "upload", project, type="primary",
                             key="create_from_uploads"):
        uploads = []
        unnamed = []
        for i, cls in enumerate(classes):
            files = files_by_class.get(cls["id"], [])
            class_shots = [s for s in shots.values() if s["class_id"] == cls["id"]]
            if (files or class_shots) and not cls["name"]:
                unnamed.append(str(i + 1))
            uploads += [tle.Upload(f.name, f.getvalue(), cls["name"]) for f in files]
            uploads += [
                tle.Upload(f"webcam_{cls['name']}_{n:03d}.jpg", s["data"], cls["name"])
                for n, s in enumerate(class_shots)
            ]
        if unnamed:
            st.error(f"Give class {', '.join(unnamed)} a name first.", icon=":material/warning:")
        elif not uploads:
            st.error("Add some photos to at least two classes first.", icon=":material/warning:")
        else:
            ingest(f"{len(uploads)} photos", lambda progress: tle.ingest_uploads(
                ws, uploads, project=project, name=name.strip() or "uploads", progress=progress))


def upload_folder() -> None:
    st.caption("Choose a folder that holds one sub-folder per class (e.g. cats/, dogs/), or "
               "train/ and val/ folders of them to keep that split. Each photo's class is the "
               "name of the folder it sits in.")
    files = st.file_uploader("Folder of class folders", type=widgets.IMAGE_TYPES,
                             accept_multiple_files="directory", key=f"folder_{gen}") or []
    if not files:
        return
    paths = [PurePosixPath(f.name) for f in files]
    counts = Counter(path.parent.name for path in paths)
    st.dataframe(pd.DataFrame({"folder": list(counts), "photos": list(counts.values())}),
                 hide_index=True)
    if access.guarded_button(st, "Create dataset from folder", "upload", project,
                             type="primary", key="create_from_folder"):
        tree = [(f.name, f.getvalue()) for f in files]
        ingest(f"{len(tree)} files", lambda progress: tle.ingest_tree(
            ws, tree, project=project, progress=progress))


def upload_zip() -> None:
    st.caption("A .zip of class folders; a train/ val/ [test/] layout keeps its split. "
               "Nothing is unpacked to disk.")
    archive = st.file_uploader("Archive", type=["zip"], key=f"zip_{gen}")
    if archive is not None and access.guarded_button(
            st, "Create dataset from .zip", "upload", project, type="primary",
            key="create_from_zip"):
        ingest(archive.name, lambda progress: tle.ingest_zip(
            ws, archive.getvalue(), project=project, name=Path(archive.name).stem,
            progress=progress))


def sample_data() -> None:
    folder = widgets.sample_folder()
    cols = st.columns(2)
    with cols[0].container(border=True):
        st.markdown("**Ants vs bees** · real photos")
        if folder is None:
            st.caption("Not available here: set TL_SAMPLE_DATA to a folder of class folders.")
        else:
            st.caption(f"{widgets.count_images(str(folder))} photos from the classic "
                       "transfer-learning tutorial, with its own train/val split.")
            if access.guarded_button(st, "Use the ants vs bees sample", "upload", project,
                                     key="sample_folder", type="primary"):
                ingest(folder.name, lambda progress: tle.ingest_folder(
                    ws, folder, project=project, name="ants vs bees (sample)",
                    progress=progress))
    with cols[1].container(border=True):
        st.markdown("**Shapes** · generated")
        st.caption("Circles, squares and triangles in random colours: 3 classes × 30 "
                   "images at 96 px. Needs nothing on disk; trains in seconds.")
        if access.guarded_button(st, "Use the shapes sample", "upload", project,
                                 key="sample_shapes"):
            ingest("the shapes sample", lambda progress: tle.ingest_uploads(
                ws, tle.synthetic_shapes(), project=project, name="shapes (sample)",
                progress=progress))


# Keyed and tracked, so the open tab survives the rerun after an ingest.
tabs = st.tabs(["Upload by class", "Folder", ".zip", "Sample data"], key="dataset_source",
               on_change="rerun")
with tabs[0]:
    upload_by_class()
with tabs[1]:
    upload_folder()
with tabs[2]:
    upload_zip()
with tabs[3]:
    sample_data()

# --- the current dataset -------------------------------------------------------------

st.divider()
datasets = tle.list_datasets(ws, project)
if not datasets:
    st.info("No dataset in this project yet: add photos above, or start with a sample.")
    st.stop()

current = state.current_dataset(project)
by_id = {d.id: d for d in datasets}
if st.session_state.get("dataset_pick") != current.id:
    st.session_state["dataset_pick"] = current.id
cols = st.columns([0.6, 0.4], vertical_alignment="bottom")
cols[0].selectbox(
    "Dataset", list(by_id), key="dataset_pick",
    format_func=lambda i: f"{by_id[i].name} · {len(by_id[i].records)} images · "
    f"{len(by_id[i].classes)} classes · {formats.format_time(by_id[i].created_at)} ({i})",
    on_change=lambda: state.set_dataset(st.session_state["dataset_pick"]),
)
dataset = by_id[st.session_state["dataset_pick"]]
report = dataset.health

sizes = report.sizes
extra_copies = sum(len(d["files"]) - 1 for d in report.duplicates)
cols = st.columns(5)
cols[0].metric("Images", len(dataset.records))
cols[1].metric("Classes", len(dataset.classes))
cols[2].metric("Unreadable", len(report.unreadable))
cols[3].metric("Duplicates", extra_copies + len(report.cross_class_duplicates),
               help="Extra copies kept once, plus images found under several classes.")
cols[4].metric("Median size", f"{sizes.median_width}×{sizes.median_height}")

left, right = st.columns([0.55, 0.45])
with left:
    st.markdown("**Images per class**")
    st.plotly_chart(charts.class_counts_bar(dataset.counts()), width="stretch")
with right:
    st.markdown("**Split**")
    draft = state.spec_draft()
    with state.engine_errors():
        parts = tle.split_records(dataset, draft["val_split"], draft["test_split"], draft["seed"])
        table = pd.DataFrame(
            {split: Counter(r.label for r in parts[split]) for split in ("train", "val", "test")},
            index=list(dataset.classes),
        ).fillna(0).astype(int)
        table.loc["total"] = table.sum()
        if not table["test"].any():
            table = table.drop(columns="test")
        st.dataframe(table, width="stretch")
        if dataset.has_given_split:
            st.caption("The dataset brings its own split; it is used as is"
                       + (f", with {draft['test_split']:.0%} of its training part held out "
                          "as a test split" if draft["test_split"] and not
                          dataset.has_given_test else "") + " (set on the Training page).")
        else:
            st.caption(f"Stratified per class: {draft['val_split']:.0%} validation, "
                       f"{draft['test_split']:.0%} test, seed {draft['seed']} (set on the "
                       "Training page).")

if report.errors or report.warnings:
    show_problems(report, unreadable=False)
else:
    st.success("No problems found: enough images per class, balanced, nothing skipped.",
               icon=":material/check_circle:")


def thumbnails_of(groups: list[dict[str, Any]], describe: Callable[[dict[str, Any]], str]) -> None:
    for group in groups[:SHOWN_GROUPS]:
        cols = st.columns([0.12, 0.88], vertical_alignment="center")
        path = ws.image_path(group["hash"])
        if path.is_file():
            cols[0].image(str(path), width="stretch")
        cols[1].markdown(describe(group))
    if len(groups) > SHOWN_GROUPS:
        st.caption(f"…and {len(groups) - SHOWN_GROUPS} more.")


if report.unreadable:
    with st.expander(f"Unreadable files ({len(report.unreadable)})",
                     icon=":material/broken_image:"):
        st.dataframe(pd.DataFrame(report.unreadable), hide_index=True, width="stretch",
                     column_config={"file": "File", "reason": "Why it was skipped"})
if report.duplicates:
    with st.expander(f"Duplicates within a class ({len(report.duplicates)})",
                     icon=":material/content_copy:"):
        st.caption("Identical files: each was kept once.")
        thumbnails_of(report.duplicates, lambda g: f"**{md_escape(g['label'])}** · "
                      + " · ".join(md_escape(f) for f in g["files"]))
if report.cross_class_duplicates:
    with st.expander(f"Same image in several classes ({len(report.cross_class_duplicates)})",
                     icon=":material/call_split:"):
        st.caption("Their label is ambiguous, so every copy was left out. Remove the wrong "
                   "copies and ingest again.")
        thumbnails_of(report.cross_class_duplicates, lambda g: "**"
                      + " / ".join(md_escape(label) for label in g["labels"]) + "** · "
                      + " · ".join(md_escape(f) for f in g["files"]))

# --- which labels are wrong, and the dataset as a map --------------------------------------

st.divider()
label_job = label_views.label_issues_section(ws, project, dataset)
label_views.dataset_map_section(ws, dataset, label_job)

# --- browse ----------------------------------------------------------------------------


def thumb_caption(record: tle.ImageRecord) -> str:
    """The file's name, after its split when the dataset gave one: the page's style cuts
    what does not fit on one line, from the end."""
    name = PurePosixPath(record.filename).name
    name = name if len(name) <= 60 else name[:59] + "…"
    return f"{record.split} · {name}" if record.split in ("val", "test") else name


# --- ----------------------------------------------------------------------

st.subheader("Browse images")
cols = st.columns([0.4, 0.2, 0.4], vertical_alignment="bottom")
label = cols[0].selectbox("Class", dataset.classes, key=f"browse_class_{dataset.id}")
records = sorted((r for r in dataset.records if r.label == label), key=lambda r: r.filename)
pages = max(1, -(-len(records) // PER_PAGE))
page = cols[1].number_input("Page", 1, pages, 1, key=f"browse_page_{dataset.id}_{label}")
cols[2].caption(f"{len(records)} images · page {page} of {pages}")
shown = records[(page - 1) * PER_PAGE : page * PER_PAGE]
# Square, cropped thumbnails keep the grid even whatever the photos' aspect ratios.
st.html("<style>.st-key-thumbnails img {aspect-ratio: 1 / 1; object-fit: cover;}"
        ".st-key-thumbnails [data-testid='stImageCaption'], "
        ".st-key-thumbnails [data-testid='stImageCaption'] * {white-space: nowrap; "
        "overflow: hidden; text-overflow: ellipsis;}</style>")
with st.container(key="thumbnails"):
    for row in range(0, len(shown), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for col, record in zip(cols, shown[row : row + GRID_COLUMNS], strict=False):
            col.image(str(ws.image_path(record.hash)), caption=md_escape(thumb_caption(record)),
                      width="stretch")

with st.expander("Delete this dataset", icon=":material/delete:"):
    st.caption("Removes the dataset from the project. Runs that use it must be deleted first; "
               "stored images stay for other datasets that share them.")
    confirm = st.checkbox(f"Yes, delete “{md_escape(dataset.name)}”",
                          key=f"confirm_delete_{dataset.id}")
    if access.guarded_button(st, "Delete dataset", "delete_dataset", project,
                             disabled=not confirm, key="delete_dataset"):
        with state.engine_errors():
            tle.delete_dataset(ws, dataset.id)  # the newest remaining one is shown next
            st.session_state["dataset_flash"] = f"Deleted “{md_escape(dataset.name)}”."
            st.rerun()
