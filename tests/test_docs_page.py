"""`/docs` works offline: Swagger UI's files come from the server, and in a real headless Chromium
the page lists the API's operations without one request leaving 127.0.0.1."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import ServerProcess, launch, servable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Request


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch((servable("Echo"),), tmp_path_factory.mktemp("docs"))
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): no browser to test /docs")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    arguments = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking"]  # fmt: skip
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=arguments)
        yield launched
        launched.close()


def test_the_page_and_its_assets_are_served_here(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        page = http.get("/docs")
        assert page.status_code == 200
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text), "a file from elsewhere"
        for path in re.findall(r"""(?:src|href)="(/docs/[^"]+)\"""", page.text):
            asset = http.get(path)
            assert asset.status_code == 200, path
            assert len(asset.content) > 10_000, path  # the real Swagger UI, not a placeholder
        assert http.get("/docs/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/docs/swagger-ui.css").headers["content-type"].startswith("text/css")
        assert http.get("/docs/index.html").status_code == 404  # only the two files the page uses


def test_the_browser_lists_the_operations_without_leaving_the_machine(
    server: ServerProcess, browser: Browser
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    requested: list[str] = []

    def record(request: Request) -> None:
        requested.append(request.url)

    page.on("request", record)
    try:
        page.goto(server.http_url + "/docs")
        page.wait_for_selector(".opblock-summary-path")
        paths = page.locator(".opblock-summary-path").all_inner_texts()
    finally:
        context.close()
    listed = {path.replace("\u200b", "").strip() for path in paths}
    assert {"/v2/health/ready", "/v2/models/{name}/infer", "/models/{name}/{method}"} <= listed, listed
    hosts = {urlsplit(url).hostname for url in requested if not url.startswith("data:")}
    assert hosts == {"127.0.0.1"}, requested
    assert any(url.endswith("/openapi.json") for url in requested)
