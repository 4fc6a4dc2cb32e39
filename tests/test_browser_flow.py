"""The main flow in a real browser: headless Chromium (Debian's) driven by Playwright against
`streamlit run app.py`, as a new user would use it. Screenshots of every page land in
$TL_SCREENSHOTS, by default <temp dir>/tl-studio-screenshots/ (printed at the end)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("TL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
SCREENSHOTS = Path(os.environ.get("TL_SCREENSHOTS",
                                  Path(tempfile.gettempdir()) / "tl-studio-screenshots"))
PER_CLASS = 12
UI_TIMEOUT_MS = 60_000
TRAIN_TIMEOUT_MS = 300_000
MISLABELLED = "ant_labelled_bee.jpg"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)  # polling a server that is starting; not a synchronisation sleep
    raise AssertionError("streamlit did not become healthy")


@pytest.fixture
def studio(tmp_path, keras_home):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TL_WORKSPACE=str(tmp_path / "ws"), KERAS_HOME=str(keras_home),
               TL_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="3")
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(url, server)
        yield url, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _subset(hymenoptera: Path, tmp_path: Path) -> tuple[dict[str, list[Path]], Path]:
    """A few training photos per class, one ant filed with the bees by mistake, and one
    held-back validation photo."""
    chosen = {label: sorted((hymenoptera / "train" / label).glob("*.jpg"))[:PER_CLASS]
              for label in ("ants", "bees")}
    mislabelled = tmp_path / MISLABELLED
    shutil.copyfile(sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[3], mislabelled)
    chosen["bees"].append(mislabelled)
    held_back = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[1]
    copy = tmp_path / "held_back_ant.jpg"
    shutil.copyfile(held_back, copy)
    return chosen, copy


def _document_photo(tmp_path: Path) -> Path:
    """A scanned page of text: nothing like an ant or a bee."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (400, 300), "white")
    draw = ImageDraw.Draw(page)
    for line in range(12):
        draw.text((20, 20 + 22 * line), f"Quarterly report: revenue, costs, outlook {line}",
                  fill="black")
    path = tmp_path / "quarterly_report.png"
    page.save(path)
    return path


def _shot(page, name: str) -> None:
    page.wait_for_timeout(400)  # let Plotly finish its transition before the picture
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _idle(page) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=UI_TIMEOUT_MS,
    )


def _goto(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title).first.wait_for(timeout=UI_TIMEOUT_MS)
    _idle(page)


class ServerMessages:
    """Counts the messages the server sends each page over its WebSocket: an idle page
    must receive none (no refresh loop running on the server for it)."""

    def __init__(self, page) -> None:
        self.count = 0
        page.on("websocket", lambda ws: ws.on("framereceived", self._received))

    def _received(self, _payload) -> None:
        self.count += 1

    def during(self, page, milliseconds: int) -> int:
        before = self.count
        page.wait_for_timeout(milliseconds)  # an observation window, not a synchronisation
        return self.count - before


def _selected_run(page) -> str:
    """The run the Training page's "Run" picker shows ("" when none is chosen)."""
    return page.get_by_role("combobox", name="Run", exact=True).input_value()


def test_main_flow_in_chromium(studio, hymenoptera):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    url, tmp_path = studio
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    photos, held_back = _subset(hymenoptera, tmp_path)
    renamed_copy = tmp_path / "same_ant_other_name.jpg"
    shutil.copyfile(held_back, renamed_copy)
    document = _document_photo(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 2000})
        page.set_default_timeout(UI_TIMEOUT_MS)
        messages = ServerMessages(page)
        page.goto(url)
        page.get_by_role("heading", name="Create your first project").wait_for()
        _idle(page)
        _shot(page, "01-home-empty")

        # Create a project from the sidebar: the dialog closes once it is created.
        page.get_by_test_id("stSidebar").get_by_role("button", name="New project").click()
        page.get_by_label("New project name").last.fill("Insects")
        page.get_by_role("button", name="Create project").last.click()
        expect(page).to_have_url(re.compile(r"project=Insects"))
        expect(page.get_by_text("What to do next")).to_be_visible()
        expect(page.get_by_label("New project name")).to_have_count(0)
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_label("Your name").fill("Ann")
        sidebar.get_by_label("Your name").press("Enter")
        expect(page).to_have_url(re.compile(r"user=Ann"))
        _idle(page)
        _shot(page, "02-home-project")

        # Dataset: one uploader per class.
        _goto(page, "Dataset")
        page.get_by_role("textbox", name="Class 1", exact=True).fill("ants")
        page.get_by_role("textbox", name="Class 2", exact=True).fill("bees")
        for number, label in ((1, "ants"), (2, "bees")):
            box = page.get_by_role("region", name=f"Photos of class {number}")
            box.locator("input[type=file]").set_input_files([str(f) for f in photos[label]])
            last = photos[label][-1].name
            expect(box.get_by_role("button", name=f"Remove {last}")).to_be_attached()
            _idle(page)
        page.get_by_role("button", name="Create dataset", exact=True).click()
        expect(page.get_by_text(re.compile(rf"Created .*{2 * PER_CLASS + 1} images"))
               ).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()  # images per class
        expect(page.get_by_test_id("stImage").locator("img").first).to_be_visible()
        _idle(page)
        _shot(page, "03-dataset")

        # Which labels are wrong: the ant filed with the bees is the suspect; relabelling
        # it saves a new version of the dataset, which the rest of the flow trains on.
        page.get_by_role("button", name="Find label issues").click()
        suspect = page.get_by_text(re.compile(re.escape(MISLABELLED)))
        expect(suspect.first).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
        expect(page.get_by_text("The dataset as a map")).to_be_visible()
        _idle(page)
        _shot(page, "03b-label-issues")
        page.get_by_text("To ants", exact=True).first.click()
        _idle(page)
        page.get_by_role("button", name="Save as a new version").click()
        expect(page.get_by_text(re.compile(r"Saved .*1 relabelled, 0 removed"))).to_be_visible()
        _idle(page)

        _goto(page, "Model")
        expect(page.get_by_role("combobox", name="Backbone")).to_have_value(
            "MobileNetV2-0.35 · weights here")
        _shot(page, "04-model")
        # Will it transfer? Every backbone here, each beside its random-init reference.
        page.get_by_role("button", name=re.compile(r"^Probe \d+ models$")).click()
        expect(page.get_by_text(re.compile(r"pretraining is worth [+-]\d")).first).to_be_visible(
            timeout=TRAIN_TIMEOUT_MS)
        expect(page.get_by_role("button", name="Use this backbone").first).to_be_visible()
        _idle(page)
        _shot(page, "04b-model-probe")

        _goto(page, "Freeze strategy")
        expect(page.get_by_text("Frozen backbone").first).to_be_visible()
        _shot(page, "05-freeze")
        # A recipe is a phase plan: gradual unfreezing lists its stages.
        page.get_by_text("Gradual unfreezing", exact=True).click()
        expect(page.get_by_text("Epochs per stage")).to_be_visible()
        expect(page.get_by_text(re.compile(r"^\d+ phases, \d+ epochs"))).to_be_visible()
        _idle(page)
        _shot(page, "05b-freeze-gradual")
        page.get_by_text("Frozen backbone", exact=True).click()
        expect(page.get_by_text("Epochs per stage")).to_have_count(0)
        _idle(page)

        # A setting survives a reload (the draft is stored per project and person).
        _goto(page, "Training")
        epochs = page.get_by_role("spinbutton", name="Epochs")
        epochs.fill("3")
        epochs.press("Tab")
        _idle(page)
        page.get_by_role("button", name="Start training").click()
        completed = page.get_by_text(re.compile(r"^Completed — validation accuracy"))
        expect(completed).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
        # Which weights the headline figure belongs to.
        expect(completed).to_have_text(re.compile(r"best epoch \d of 3 \(restored\)|last epoch"))
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        _idle(page)
        ann_run = re.search(r"run=(r[0-9a-f]+)", page.url).group(1)
        _shot(page, "06-training")
        page.reload()
        expect(completed).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        _idle(page)
        expect(page.get_by_role("spinbutton", name="Epochs")).to_have_value("3")
        assert ann_run in _selected_run(page)
        # Nothing is queued or running: the idle page costs the server nothing.
        assert messages.during(page, 4500) == 0

        # A second person, in another browser, trains in turn.
        bob = browser.new_context(viewport={"width": 1440, "height": 2000}).new_page()
        bob.set_default_timeout(UI_TIMEOUT_MS)
        bob.goto(f"{url}/training?project=Insects&user=Bob")
        bob.get_by_role("heading", name="Training").first.wait_for()
        _idle(bob)
        assert ann_run not in _selected_run(bob)  # Ann's run is not shown as Bob's
        expect(bob.get_by_text("Completed — validation accuracy")).to_have_count(0)
        bob_epochs = bob.get_by_role("spinbutton", name="Epochs")
        expect(bob_epochs).to_have_value("10")  # Bob's own draft, not Ann's
        bob_epochs.fill("2")
        bob_epochs.press("Tab")
        _idle(bob)
        bob.get_by_role("button", name="Start training").click()
        bob_run = None
        try:
            expect(bob).to_have_url(re.compile(r"run=r[0-9a-f]+"))
            bob_run = re.search(r"run=(r[0-9a-f]+)", bob.url).group(1)
            # Ann's tab keeps her run; Bob's appears in her queue list while it is active.
            _goto(page, "Training")
            assert ann_run in _selected_run(page)
            if "Completed" not in bob.inner_text("body"):
                expect(page.get_by_text(re.compile(r"started by Bob"))).to_be_visible()
            expect(bob.get_by_text("Completed — validation accuracy")).to_be_visible(
                timeout=TRAIN_TIMEOUT_MS)
            _shot(bob, "07-training-second-user")
        finally:
            bob.context.close()
        page.reload()
        page.get_by_role("heading", name="Training").first.wait_for()
        _idle(page)
        assert ann_run in _selected_run(page) and bob_run not in _selected_run(page)

        # Prediction: the same photo twice, once more under another name, and a scanned
        # page that looks like none of the training images.
        _goto(page, "Prediction")
        page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(
            [str(held_back), str(held_back), str(renamed_copy), str(document)])
        # Each ant photo gets a label, or "Not sure" when its calibrated confidence is low.
        prediction = page.get_by_test_id("stMetric").filter(has_text="Prediction")
        not_sure = page.get_by_test_id("stAlertContentInfo").filter(has_text="Not sure")
        expect(page.get_by_text("Why?", exact=True)).to_have_count(3)
        assert prediction.count() + not_sure.count() == 3
        for value in prediction.get_by_test_id("stMetricValue").all():
            expect(value).to_have_text(re.compile("ants|bees"))
        expect(page.get_by_text(re.compile("This looks like none of the training images"))
               ).to_have_count(1)
        expect(page.get_by_test_id("stException")).to_have_count(0)
        _idle(page)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download CSV").click()
        header, *rows = Path(download.value.path()).read_text().splitlines()
        assert "p(ants)" in header and "p(bees)" in header and len(rows) == 4
        assert "unfamiliar" in header and "not_sure" in header
        _shot(page, "08-prediction")
        # Why? Grad-CAM over the first photo, for the class it predicted.
        page.get_by_text("Why?", exact=True).first.click()
        expect(page.get_by_text(re.compile(r"^Grad-CAM for ")).first).to_be_visible()
        expect(page.get_by_test_id("stException")).to_have_count(0)
        _idle(page)
        _shot(page, "08b-prediction-why")

        _goto(page, "Runs")
        expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        _shot(page, "09-runs")
        # How far to trust a confidence: the reliability diagram before and after T.
        page.get_by_role("tab", name="Calibration").click()
        expect(page.get_by_test_id("stMetric").filter(has_text="ECE before")).to_be_visible()
        expect(page.get_by_test_id("stMetric").filter(has_text="Temperature T")).to_be_visible()
        _idle(page)
        _shot(page, "09b-runs-calibration")

        # Which strategy wins: one click queues every recipe and the from-scratch baseline.
        page.get_by_role("button", name=re.compile(r"^Sweep \d+ strategies$")).click()
        expect(page.get_by_text(re.compile(r"^Transfer learning bought [+-]\d"))).to_be_visible(
            timeout=3 * TRAIN_TIMEOUT_MS)
        expect(page.get_by_test_id("stException")).to_have_count(0)
        _idle(page)
        _shot(page, "10-runs-sweep")
        browser.close()
    print(f"\nscreenshots: {SCREENSHOTS}")
    assert len(list(SCREENSHOTS.glob("*.png"))) >= 15
