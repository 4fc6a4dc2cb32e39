"""The app's pages, declared once: app.py's navigation is built from PAGES, and every link
to a page (st.page_link, st.switch_page) names it by one of these paths.

Pages live in views/, not pages/: with a folder of that name Streamlit runs a deep link's
page without app.py (no sidebar, no project)."""

from __future__ import annotations

from dataclasses import dataclass

HOME = "views/home.py"
DATASET = "views/dataset.py"
MODEL = "views/model.py"
FREEZE = "views/freeze.py"
TRAINING = "views/training.py"
PREDICTION = "views/prediction.py"
RUNS = "views/runs.py"


@dataclass(frozen=True)
class PageEntry:
    path: str
    title: str
    icon: str
    default: bool = False


PAGES = (  # in the order the sidebar lists them
    PageEntry(HOME, "Home", ":material/home:", default=True),
    PageEntry(DATASET, "Dataset", ":material/photo_library:"),
    PageEntry(MODEL, "Model", ":material/memory:"),
    PageEntry(FREEZE, "Freeze strategy", ":material/ac_unit:"),
    PageEntry(TRAINING, "Training", ":material/model_training:"),
    PageEntry(PREDICTION, "Prediction", ":material/image_search:"),
    PageEntry(RUNS, "Runs", ":material/leaderboard:"),
)
