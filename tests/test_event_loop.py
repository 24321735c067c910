"""The server's event loop: asyncio's own by default, uvloop when MODELPOD_EVENT_LOOP asks for it."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from modelpod.server.settings import Settings

from conftest import StartServer, servable


def loop_module(start_server: StartServer, env: dict[str, str]) -> str:
    server = start_server(servable("LoopKind"), env=env)
    answer = httpx.post(f"{server.http_url}/models/LoopKind/predict", json={}, timeout=30)
    assert answer.status_code == 200, answer.text
    module: str = answer.json()
    return module


def test_the_default_loop_is_asyncio(start_server: StartServer) -> None:
    assert Settings().event_loop == "asyncio"
    assert loop_module(start_server, {}).startswith("asyncio")


def test_uvloop_when_asked(start_server: StartServer) -> None:
    pytest.importorskip("uvloop", reason="uvloop comes with uvicorn[standard] on Linux and macOS only")
    assert loop_module(start_server, {"MODELPOD_EVENT_LOOP": "uvloop"}) == "uvloop"


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(ValidationError, match="event_loop"):
        Settings(event_loop="trio")  # type: ignore[arg-type]
