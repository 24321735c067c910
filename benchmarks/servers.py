"""Start the servers under test, each as its own process (and process group), and stop them.

Every server is started in a new session, so that stopping it reaches the processes it spawned
(LitServe's workers, uvicorn's) by its process group, and Ctrl-C in a terminal reaches only the
orchestrator, which then stops them. When `BENCH_PID_DIR` is set, each server's PID is written
there too, so that `run.sh` can stop what is left if the orchestrator itself is killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "peers"
HOST = "127.0.0.1"
# every server runs its BLAS and torch on one thread: with their own threads, numpy called from
# many request threads at once collapses (tens of requests a second), and the load generator
# needs a core too
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    http_port: int
    grpc_port: int | None = None
    pid_file: Path | None = field(default=None)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `grace_s`; idempotent."""
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=grace_s)
        _signal_group(self.process.pid, signal.SIGKILL)  # children that outlived their parent
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the server is its own session leader: its group id is its pid


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def child_environment() -> dict[str, str]:
    """What every server (and the in-process ceiling) runs with: one BLAS thread, no downloads."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update(ONE_THREAD)
    # the peers' scripts import `mlp_numpy` (and MLServer its runtime) from these folders
    path = [str(HERE), str(PEERS), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    return env


def _spawn(
    name: str, command: list[str], log_dir: Path, env_extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path, Path | None]:
    log = log_dir / f"{name}.log"
    env = {**child_environment(), **(env_extra or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
    pid_file = None
    if pid_dir := os.environ.get("BENCH_PID_DIR"):
        pid_file = Path(pid_dir) / f"{name}.pid"
        pid_file.write_text(str(process.pid))
    return process, log, pid_file


def _wait_http(server: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + path, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} was not ready within {timeout_s:.0f} s:\n{server.log_tail()}")


@contextlib.contextmanager
def running(server: Server, ready_path: str, timeout_s: float = 120.0) -> Iterator[Server]:
    """The server, once `ready_path` answers 200; stopped on the way out, whatever happened."""
    try:
        _wait_http(server, ready_path, timeout_s)
        yield server
    finally:
        server.stop()


def modelpod(log_dir: Path, data_path: Path, models: list[str], timeout_s: float = 120.0) -> Server:
    """`modelpod serve` on free ports; the ports are read from its log."""
    command = [sys.executable, "-m", "modelpod", "serve", *models, "--http-port", "0", "--grpc-port", "0"]
    command += ["--data-path", str(data_path), "--log-level", "warning"]
    process, log, pid_file = _spawn("modelpod", command, log_dir)
    ports: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        ports = {kind: int(port) for kind, port in re.findall(r"(HTTP|gRPC) listening on \S*?:(\d+)", text)}
        if "modelpod: ready" in text and len(ports) == 2:
            return Server("modelpod", process, log, ports["HTTP"], ports["gRPC"], pid_file)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    server = Server("modelpod", process, log, 0, None, pid_file)
    tail = server.log_tail()
    server.stop()
    raise RuntimeError(f"modelpod did not become ready:\n{tail}")


def fastapi(log_dir: Path, handlers: str, with_minilm: bool = True) -> Server:
    """Plain FastAPI with `sync` (`def`, on the thread pool) or `async` (`async def`, inline) handlers."""
    port = free_port()
    command = [sys.executable, str(PEERS / "fastapi_server.py"), "--port", str(port), "--handlers", handlers]
    if not with_minilm:
        command.append("--no-minilm")
    process, log, pid_file = _spawn(f"fastapi-{handlers}", command, log_dir)
    return Server(f"fastapi-{handlers}", process, log, port, None, pid_file)


def fastapi_generate(log_dir: Path, data_path: Path, model_path: Path) -> Server:
    """Plain FastAPI streaming the tiny GPT-2's per-request generation (`openai_load.py`'s baseline)."""
    port = free_port()
    command = [sys.executable, str(PEERS / "fastapi_generate.py"), "--port", str(port)]
    command += ["--data-path", str(data_path), "--model-path", str(model_path)]
    process, log, pid_file = _spawn("fastapi-generate", command, log_dir)
    return Server("fastapi-generate", process, log, port, None, pid_file)


def peer_python(peer: str) -> Path:
    """The interpreter of a peer's own virtual environment, which `run.sh` creates."""
    python = HERE / f".venv-{peer}" / "bin" / "python"
    failed = HERE / f".venv-{peer}.failed"  # run.sh's note of why the install failed
    if failed.exists():
        raise RuntimeError(f"did not install: {failed.read_text().strip()}")
    if not python.exists():
        raise RuntimeError(f"no {peer} environment at {python.parent.parent}: run benchmarks/run.sh")
    return python


def litserve(log_dir: Path, batch: int, batch_timeout_s: float) -> Server:
    port = free_port()
    name = f"litserve-batch{batch}"
    command = [str(peer_python("litserve")), str(PEERS / "litserve_server.py"), "--port", str(port)]
    command += ["--batch", str(batch), "--batch-timeout", str(batch_timeout_s)]
    process, log, pid_file = _spawn(name, command, log_dir)
    return Server(name, process, log, port, None, pid_file)


def litserve_generate(log_dir: Path, data_path: Path, model_path: Path) -> Server:
    """LitServe's OpenAI spec streaming the tiny GPT-2 per request (`openai_load.py`'s peer); the
    repository root on its path for the example's `modelpod` imports."""
    port = free_port()
    command = [str(peer_python("litserve")), str(PEERS / "litserve_generate.py"), "--port", str(port)]
    command += ["--data-path", str(data_path), "--model-path", str(model_path)]
    path = os.pathsep.join(filter(None, [str(ROOT), child_environment().get("PYTHONPATH", "")]))
    process, log, pid_file = _spawn("litserve-generate", command, log_dir, {"PYTHONPATH": path})
    return Server("litserve-generate", process, log, port, None, pid_file)


def _v2_peer(
    peer: str, script: str, log_dir: Path, batch: int, env: dict[str, str], extra: list[str] | None = None
) -> Server:
    """A peer speaking V2 over HTTP and gRPC on free ports (and one for the metrics it serves)."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    command = [str(peer_python(peer)), str(PEERS / script), "--http-port", str(http)]
    command += ["--grpc-port", str(grpc), "--metrics-port", str(metrics), "--batch", str(batch)]
    command += extra or []
    name = f"{peer}-batch{batch}"
    process, log, pid_file = _spawn(name, command, log_dir, env)
    return Server(name, process, log, http, grpc, pid_file)


def mlserver(log_dir: Path, batch: int) -> Server:
    repository = log_dir.parent / f"mlserver-batch{batch}"  # the work folder, removed after the run
    return _v2_peer("mlserver", "mlserver_server.py", log_dir, batch, {}, ["--repository", str(repository)])


def pytriton(log_dir: Path, batch: int) -> Server:
    # PyTriton's Python stub links a libpython3.11 by name; the one of the environment's own
    # interpreter must come first, or the stub runs that interpreter's standard library on the
    # system's libpython, whose older `_thread` lacks what `multiprocessing` calls.
    python = peer_python("pytriton")
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {"LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}
    return _v2_peer("pytriton", "pytriton_server.py", log_dir, batch, env)
