"""The status page, in a real headless Chromium against a live `modelpod serve` under load.

Set MODELPOD_STATUS_SCREENSHOT=docs/status-page.png to also write the README's screenshot, taken
after a longer run so that the charts have some history.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from conftest import ROOT, ServerProcess, launch, servable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

SCREENSHOT = os.environ.get("MODELPOD_STATUS_SCREENSHOT")
HISTORY_SECONDS = 40.0 if SCREENSHOT else 3.0  # load before the screenshot
P50_BLUE = (0x25, 0x63, 0xEB)
REQUESTS_GREEN = (0x16, 0xA3, 0x4A)
BATCH_PURPLE = (0x7C, 0x3A, 0xED)
NO_VALUE = "\u2013"  # the en dash the page shows where there is no figure yet


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    learner = f"{ROOT / 'tests' / 'servable_training.py'}:Learner"
    models = (servable("Echo"), servable("BatchedWords"), servable("Slow"), servable("Broken"), learner)
    process = launch(models, tmp_path_factory.mktemp("status"))
    yield process
    assert process.stop() == 0


class Load:
    """Background clients sending a mix of requests until stopped, bounded in count and time."""

    def __init__(self, url: str, clients: int = 4, limit: int = 20_000, seconds: float = 90.0) -> None:
        self.url = url
        self.sent = 0
        self._limit = limit
        self._deadline = time.monotonic() + seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _more(self) -> bool:
        with self._lock:
            self.sent += 1
            return self.sent <= self._limit and time.monotonic() < self._deadline and not self._stop.is_set()

    def _run(self, n: int) -> None:
        chooser = random.Random(n)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while self._more():
                self._stop.wait(0.01)  # paced: a steady load, not all of a small machine's cores
                roll = chooser.random()
                if roll < 0.5:
                    client.post("/models/echo/predict", json={"text": "hello"})
                elif roll < 0.9:
                    client.post("/models/words/predict", json={"word": "batch"})
                else:
                    client.post("/models/slow/predict", json={"seconds": chooser.uniform(0.01, 0.06)})


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium): no browser to test the page"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    arguments = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking"]  # fmt: skip
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=arguments)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-US")
    opened = context.new_page()
    opened.set_default_timeout(20_000)
    yield opened
    context.close()


# -- without a browser: the routes themselves ---------------------------------------------------------


def test_the_page_is_served_whole_and_needs_nothing_from_elsewhere(server: ServerProcess) -> None:
    for path in ("/", "/ui"):
        response = httpx.get(server.http_url + path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "<canvas" in response.text
        # Offline: no script, style or image is fetched from another host.
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", response.text)
        assert "@import" not in response.text


def test_activity_counts_requests_and_keeps_the_failures(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        before = client.get("/ui/activity").json()["server"]["requests"]
        for _ in range(3):
            assert client.post("/models/echo/predict", json={"text": "a"}).status_code == 200
        refused = client.post(
            "/models/echo/predict", json={"text": 5}, headers={"X-Request-Id": "bad-text-1"}
        )
        assert refused.status_code == 400
        activity = client.get("/ui/activity").json()
    assert activity["server"]["requests"] == before + 4
    assert activity["window_seconds"] >= 60
    echo = next(v for v in activity["versions"] if v["model"] == "echo")
    assert echo["version"] == "1"
    assert echo["series"][-1]["requests"] >= 1
    error = next(e for e in activity["errors"] if e["request_id"] == "bad-text-1")
    assert (error["model"], error["kind"]) == ("echo", "invalid_input")
    assert error["message"] == refused.json()["error"]


# -- in the browser ------------------------------------------------------------------------------------


def number(page: Page, selector: str) -> int:
    return int(re.sub(r"\D", "", page.locator(selector).inner_text()) or 0)


def pixels_like(png: bytes, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    """How many pixels of a screenshot are close to `colour`."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return int(np.all(np.abs(image - np.array(colour)) <= tolerance, axis=-1).sum())


def test_the_page_shows_live_figures_under_load(server: ServerProcess, page: Page, tmp_path: Path) -> None:
    pytest.importorskip("PIL", reason="Pillow is not installed: the screenshot cannot be inspected")
    with Load(server.http_url) as load:
        page.goto(server.http_url + "/ui")
        for model in ("echo", "words", "slow", "broken"):
            page.locator(f'#models tr[data-model="{model}"]').wait_for()
        page.wait_for_function("() => document.querySelector('#connection').textContent.startsWith('live')")

        failed = httpx.post(
            server.http_url + "/models/broken/predict", json={}, headers={"X-Request-Id": "broken-on-purpose"}
        )
        assert failed.status_code == 500
        error_row = page.locator("#errors tr", has_text="broken-on-purpose")
        error_row.wait_for()
        assert "model_error" in error_row.inner_text()
        assert "do-not-leak" not in page.content()  # the page shows what the client was told, no more

        first = number(page, "#total-requests")
        time.sleep(2.5)  # two polls later
        second = number(page, "#total-requests")
        assert second > first > 0
        page.wait_for_function("() => parseFloat(document.querySelector('#total-rate').textContent) > 0")
        echo_row = page.locator('#models tr[data-model="echo"]')
        assert "loaded" in echo_row.inner_text()
        assert number(page, '#models tr[data-model="echo"] td:nth-child(5)') > 0
        page.wait_for_function(
            "() => !document.querySelector('#total-p50').textContent.includes('" + NO_VALUE + "')"
        )

        job = {"steps": 1000, "seconds_per_step": (HISTORY_SECONDS + 20) / 1000}  # still running at the end
        assert httpx.post(server.http_url + "/models/learner/train", json=job).status_code == 202
        training = page.locator('#models tr[data-model="learner"] td.training')
        page.wait_for_function(
            """() => /step [1-9][0-9]* of 1000/.test(
                document.querySelector('#models tr[data-model="learner"] td.training')?.textContent ?? '')"""
        )  # the real job, from the server's own listing
        assert "running" in training.inner_text()
        assert "loss" in training.inner_text()

        time.sleep(HISTORY_SECONDS)
        assert load.sent > 0
        shot = page.screenshot(full_page=True)
        (tmp_path / "status-page.png").write_bytes(shot)
        if SCREENSHOT:
            (ROOT / SCREENSHOT).write_bytes(shot)
        assert pixels_like(page.locator("#latency-chart").screenshot(), P50_BLUE) > 50
        assert pixels_like(page.locator("#rate-chart").screenshot(), REQUESTS_GREEN) > 50
        assert pixels_like(page.locator("#batch-chart").screenshot(), BATCH_PURPLE) > 50
    assert pixels_like(shot, P50_BLUE) > 50


def test_training_progress_is_drawn_from_the_model_listing(server: ServerProcess, page: Page) -> None:
    job = {
        "state": "running",
        "started_at": time.time() - 5,
        "finished_at": None,
        "error": None,
        "progress": {"step": 3, "total": 12, "message": "epoch 1", "metrics": {"loss": 0.25}},
    }

    def with_training(route: Route) -> None:
        answer = route.fetch()
        models: list[dict[str, Any]] = answer.json()
        for model in models:
            for version in model["versions"]:
                version["training"] = job if model["name"] == "echo" else None
        route.fulfill(response=answer, body=json.dumps(models))

    page.route("**/models", with_training)
    page.goto(server.http_url + "/")
    cell = page.locator('#models tr[data-model="echo"] td.training')
    cell.wait_for()
    assert "running" in cell.inner_text()
    assert "step 3 of 12" in cell.inner_text()
    assert "loss 0.25" in cell.inner_text()
    assert "epoch 1" in cell.inner_text()
    width = cell.locator(".progress > div").evaluate("bar => bar.style.width")
    assert float(width.removesuffix("%")) == pytest.approx(25.0)
    assert page.locator('#models tr[data-model="words"] td:last-child').inner_text() == NO_VALUE


def test_a_server_asking_for_a_key_gets_one_from_the_page(server: ServerProcess, page: Page) -> None:
    key = "sekret-key"
    seen: list[str | None] = []

    def guarded(route: Route) -> None:
        # Stands in for a server with authentication: 401 unless the right bearer token comes.
        given = route.request.headers.get("authorization")
        seen.append(given)
        if given == f"Bearer {key}":
            route.continue_()
        else:
            route.fulfill(status=401, json={"error": "this server needs an API key"})

    page.route(re.compile(r".*/(models|ui/activity|v2)$"), guarded)
    page.goto(server.http_url + "/ui")
    auth = page.locator("#auth")
    auth.get_by_text("This server needs an API key").wait_for()
    page.fill("#api-key", "wrong-key")
    page.click("#auth button")
    page.locator("#auth-refused").wait_for()
    page.fill("#api-key", key)
    page.click("#auth button")
    page.locator('#models tr[data-model="echo"]').wait_for()
    assert auth.is_hidden()
    assert page.evaluate("() => sessionStorage.getItem('modelpod.apiKey')") == key
    assert seen[0] is None
    assert f"Bearer {key}" in seen
