"""Load benchmark: several people using one running instance at once while it trains.

`streamlit run app.py` serves a workspace holding the ants-vs-bees photos and a trained
model, while its worker trains a long run. N browser-free sessions speak Streamlit's own
protocol to it (WebSocket + protobuf, and the HTTP upload route for photos, exactly as a
browser tab does) for a fixed time: each loads pages and predicts an uploaded photo in
random turn. Reported: pages and predictions served, p50/p95 latency (request to the
end of the script run), and errors (exceptions on a page, failed uploads, dropped
connections), which must be 0. No figure is asserted.

    python bench/bench_load.py [--sessions 4] [--seconds 60] [--auth none|accounts] [--json]

With `--auth accounts` (the default) the app runs with TL_AUTH=accounts and each session
is a different signed-in person (an account, an editor of the project) whose browser
holds a session cookie, as after signing in through the form.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from studio_server import print_report, start_studio  # noqa: E402 - beside this file

SHARED = Path(os.environ.get("TL_SHARED", ROOT.parent / "shared"))
PAGES = ["", "dataset", "model", "freeze", "training", "runs"]  # url paths; "" is Home
XSRF_COOKIE = "_streamlit_xsrf"


@dataclass
class Tally:
    pages: list[float] = field(default_factory=list)
    predictions: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Session:
    """One browser tab's conversation with the server, without the browser."""

    def __init__(self, url: str, query: str, cookies: dict[str, str] | None = None) -> None:
        self.url, self.query = url, query
        self.cookies = dict(cookies or {})
        self.session_id = ""
        self.widgets: dict[str, str] = {}  # label -> widget id, from the last page drawn

    async def __aenter__(self) -> Session:
        import httpx
        import websockets

        self.http = httpx.AsyncClient(base_url=self.url, timeout=120)
        health = await self.http.get("/_stcore/health")  # sets the XSRF cookie
        self.xsrf = health.cookies.get(XSRF_COOKIE, "")
        self.cookies[XSRF_COOKIE] = self.xsrf
        host = self.url.split("//", 1)[1]
        cookie_header = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        self.ws = await websockets.connect(
            f"ws://{host}/_stcore/stream", subprotocols=["streamlit", self.xsrf],
            additional_headers={"Cookie": cookie_header, "Origin": self.url}, max_size=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.aclose()

    async def _receive(self):
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        message = ForwardMsg()
        message.ParseFromString(await self.ws.recv())
        return message

    async def run(self, page: str, widget_states: list | None = None) -> list[str]:
        """Load `page` (with these widget states) and wait for the script run to end.
        Returns the exception messages the page showed."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        request = BackMsg()
        request.rerun_script.query_string = self.query
        request.rerun_script.page_name = page
        for state in widget_states or []:
            request.rerun_script.widget_states.widgets.append(state)
        await self.ws.send(request.SerializeToString())
        exceptions, self.widgets = [], {}
        while True:
            message = await self._receive()
            kind = message.WhichOneof("type")
            if kind == "new_session":
                self.session_id = message.new_session.initialize.session_id
            elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                element = message.delta.new_element
                if element.WhichOneof("type") == "exception":
                    exceptions.append(element.exception.message)
                elif (element.WhichOneof("type") == "heading"
                      and element.heading.body == "Sign in"):
                    exceptions.append("shown the sign-in page: the session cookie was refused")
                elif element.WhichOneof("type") == "file_uploader":
                    self.widgets[element.file_uploader.label] = element.file_uploader.id
            elif kind == "script_finished":
                return exceptions

    async def upload(self, label: str, name: str, data: bytes):
        """Upload one file to the uploader `label` the way the browser does; returns the
        widget state that tells the next run about it."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        request = BackMsg()
        request.file_urls_request.request_id = f"upload-{time.monotonic_ns()}"
        request.file_urls_request.file_names.append(name)
        request.file_urls_request.session_id = self.session_id
        await self.ws.send(request.SerializeToString())
        while True:
            message = await self._receive()
            if message.WhichOneof("type") == "file_urls_response":
                break
        urls = message.file_urls_response.file_urls[0]
        response = await self.http.put(
            urls.upload_url, files={"file": (name, data, "image/jpeg")},
            headers={"X-Xsrftoken": self.xsrf}, cookies={XSRF_COOKIE: self.xsrf})
        response.raise_for_status()
        state = WidgetState(id=self.widgets[label])
        info = state.file_uploader_state_value.uploaded_file_info.add()
        info.name, info.size, info.file_id = name, len(data), urls.file_id
        info.file_urls.CopyFrom(urls)
        return state


async def _person(number: int, url: str, photos: list[Path], until: float,
                  tally: Tally, cookies: dict[str, str]) -> None:
    rng = random.Random(number)
    try:
        async with Session(url, f"project=load&user=person-{number}", cookies) as tab:
            await tab.run("")
            while time.monotonic() < until:
                started = time.perf_counter()
                if rng.random() < 0.3:
                    shown = await tab.run("prediction")
                    photo = rng.choice(photos)
                    state = await tab.upload("Images", photo.name, photo.read_bytes())
                    shown += await tab.run("prediction", [state])
                    tally.predictions.append(time.perf_counter() - started)
                else:
                    shown = await tab.run(rng.choice(PAGES))
                    tally.pages.append(time.perf_counter() - started)
                tally.errors += [f"person {number}: {text}" for text in shown]
    except Exception as exc:  # a dropped session is an error to report, not a crashed bench
        tally.errors.append(f"person {number}: {type(exc).__name__}: {exc}")


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--auth", choices=("none", "accounts"), default="accounts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("KERAS_HOME", str(SHARED / "weights" / "keras_home"))
    os.environ.setdefault("TL_OFFLINE", "1")
    import tl_engine as tle

    ws = tle.Workspace(Path(tempfile.mkdtemp(prefix="tl-bench-load-")) / "ws")
    data = SHARED / "data" / "hymenoptera"
    dataset = tle.ingest_folder(ws, data, project="load")
    first = tle.submit_run(ws, "load", dataset.id, tle.RunSpec(epochs=3), started_by="setup")
    assert tle.wait_for_run(ws, first.run_id).status == "completed"

    cookies = {i: {} for i in range(-1, args.sessions)}
    if args.auth == "accounts":
        from tl_engine import access, accounts

        for number in cookies:
            name = f"person-{number + 1}"
            accounts.add_account(ws, name, "a long enough password")
            access.add_member(ws, tle.Identity("bench", admin=True), "load", name, "editor")
            cookies[number] = {"tl_session": accounts.start_session(ws, name)}

    server, url = start_studio(TL_WORKSPACE=str(ws.root), TL_AUTH=args.auth)
    busy = None
    try:
        # Warm up once (TensorFlow import, model load), as a server in use already is.
        warm = Tally()
        asyncio.run(_person(-1, url, sorted((data / "val").rglob("*.jpg"))[:1],
                            time.monotonic() + 1, warm, cookies[-1]))
        # A long training keeps the worker busy for the whole measurement.
        busy = tle.submit_run(ws, "load", dataset.id,
                              tle.RunSpec(epochs=500, augment=("flip",), batch_size=16),
                              started_by="trainer").run_id
        photos = sorted((data / "val").rglob("*.jpg"))
        tally = Tally()
        until = time.monotonic() + args.seconds

        async def everyone() -> None:
            await asyncio.gather(*(_person(i, url, photos, until, tally, cookies[i])
                                   for i in range(args.sessions)))

        asyncio.run(everyone())
        training = tle.get_run(ws, busy)
    finally:
        if busy:
            tle.cancel_run(ws, busy)
            tle.wait_for_run(ws, busy, timeout_s=120)
        server.terminate()
        server.wait(timeout=30)

    report = {
        "sessions": args.sessions,
        "auth": args.auth,
        "seconds": args.seconds,
        "pages_served": len(tally.pages),
        "page_p50_s": _percentile(tally.pages, 0.5),
        "page_p95_s": _percentile(tally.pages, 0.95),
        "predictions_served": len(tally.predictions),
        "prediction_p50_s": _percentile(tally.predictions, 0.5),
        "prediction_p95_s": _percentile(tally.predictions, 0.95),
        "errors": len(tally.errors) + len(warm.errors),
        "training_while_measured": training.status,
        "cpu": os.cpu_count(),
    }
    for error in (warm.errors + tally.errors)[:10]:
        print(f"error: {error}", file=sys.stderr)
    print_report(report, args.json)

if __name__ == "__main__":
    main()
