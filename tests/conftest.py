"""Fixtures that start real `modelpod serve` processes on free loopback ports."""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVABLE = ROOT / "tests" / "servable.py"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray clusters of the tests report nothing home
_LISTEN = re.compile(r"modelpod: (HTTP|gRPC) listening on (?:http://)?(\S+):(\d+)")


@dataclass
class ServerProcess:
    """A `modelpod serve` child process and where it listens."""

    process: subprocess.Popen[str]
    data_path: Path
    lines: list[str] = field(default_factory=list)
    http_port: int = 0
    grpc_port: int = 0
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 60.0) -> str:
        """Block until the server prints a line matching `pattern`; fail with its output if not."""
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if re.search(pattern, line):
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"server exited before printing {pattern!r}:\n{self.output}")
            if re.search(pattern, line):
                return line
        pytest.fail(f"server did not print {pattern!r} within {timeout} s:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the server and wait for it to exit; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"server did not exit within {timeout} s of signal {sig}:\n{self.output}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)


class StartServer(Protocol):
    def __call__(
        self,
        *models: str,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        data_path: Path | None = None,
        wait_ready: bool = True,
    ) -> ServerProcess: ...


def launch(
    models: tuple[str, ...],
    data_path: Path,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> ServerProcess:
    command = [
        sys.executable,
        "-m",
        "modelpod",
        "serve",
        *models,
        "--host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--data-path",
        str(data_path),
        *args,
    ]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = ServerProcess(process, data_path)
    threading.Thread(target=server._read, daemon=True).start()
    server.http_port = _port(server.wait_for_line(r"HTTP listening on"))
    server.grpc_port = _port(server.wait_for_line(r"gRPC listening on"))
    if wait_ready:
        server.wait_for_line(r"^modelpod: ready$")
    return server


def _port(line: str) -> int:
    match = _LISTEN.search(line)
    assert match is not None, line
    return int(match.group(3))


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start `modelpod serve` processes for one test; each is stopped (or killed) afterwards."""
    started: list[ServerProcess] = []

    def start(
        *models: str,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        data_path: Path | None = None,
        wait_ready: bool = True,
    ) -> ServerProcess:
        server = launch(models, data_path or tmp_path / "appdata", args, env, wait_ready)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop(timeout=15)


def load_example(filename: str) -> ModuleType:
    """Import an example file by path, once per session (examples are scripts, not a package)."""
    name = f"modelpod_example_{Path(filename).stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / filename)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def servable(name: str) -> str:
    """A `modelpod serve` reference to a test model in tests/servable.py."""
    return f"{SERVABLE}:{name}"


def example(reference: str) -> str:
    """A `modelpod serve` reference to an example, e.g. example('iris.py:IrisClassifier')."""
    return str(ROOT / "examples" / reference)
