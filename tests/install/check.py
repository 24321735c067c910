"""What each install of modelpod promises, checked inside a fresh virtual environment holding that
install and nothing else: `python check.py EXTRA [...]`. Run by scripts/install_matrix.py, one
environment per extra; not collected by pytest (it needs those environments, not the dev one).

Exits non-zero, with the reason, when the promise is broken; prints `skipped: why` and exits 0
when the check cannot run here (PostgreSQL not listening).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
READY_DEADLINE_S = 600.0  # the README's command installs before it serves
OPTIONAL_MODULES = ("modelpod.server", "modelpod.client", "modelpod.registry.store", "modelpod.ray",
                    "starlette", "uvicorn", "grpc", "google.protobuf", "sqlalchemy", "httpx", "pydantic",
                    "orjson", "rich", "torch", "ray")  # fmt: skip


def installed_modelpod() -> None:
    """Every check is about the installed package, never this checkout's source."""
    import modelpod

    assert "site-packages" in modelpod.__file__, f"modelpod came from {modelpod.__file__}, not the install"


def check_core() -> None:
    import modelpod

    loaded = sorted(m for m in sys.modules if m in OPTIONAL_MODULES or m.startswith(OPTIONAL_MODULES))
    assert not loaded, f"`import modelpod` loaded optional modules: {loaded}"
    tour = README[README.index("## A 30-second tour") :]
    tour = tour[: tour.index("\n## ")]
    blocks = re.findall(r"```python\n(.*?)```", tour, flags=re.DOTALL)
    assert blocks, "the README's tour has no python block"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert modelpod.Runner is not None
    missing = subprocess.run([sys.executable, "-m", "modelpod", "serve", "examples/functions.py:add"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert missing.returncode == 2, missing
    (line,) = missing.stderr.strip().splitlines()  # one line, no traceback
    doctor = subprocess.run([sys.executable, "-m", "modelpod", "doctor"], capture_output=True, text=True,
                            timeout=60, check=True).stdout  # fmt: skip
    assert re.search(r"^  server +no +starlette \(missing\)", doctor, flags=re.MULTILINE), doctor
    assert line.startswith(
        'modelpod: modelpod serve needs the server extra: pip install "modelpod[server]"'
    ), line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_command() -> str:
    """The README's first command, exactly as a reader copies it."""
    return re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)[0].strip()


def wait_ready(url: str, server: subprocess.Popen[str], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}/v2/health/ready did not answer 200 within {deadline_s:.0f} s")


def post(url: str, body: object) -> object:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def check_server(client_python: str | None = None) -> None:
    """The README's first command, run as written in a shell with this environment active."""
    http_port, grpc_port = free_port(), free_port()
    environment = dict(os.environ, MODELPOD_HTTP_PORT=str(http_port), MODELPOD_GRPC_PORT=str(grpc_port),
                       MODELPOD_DATA_PATH=tempfile.mkdtemp(prefix="modelpod-readme-"),
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # fmt: skip
    command = first_command()
    print(f"running, in {ROOT}: {command}", flush=True)
    server = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=environment, text=True,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_ready(url, server, READY_DEADLINE_S)
        answer = post(f"{url}/models/iris/predict", {"features": [5.1, 3.5, 1.4, 0.2]})
        assert isinstance(answer, dict), answer
        assert answer["label"] == "setosa", answer
        with urllib.request.urlopen(f"{url}/docs", timeout=10) as page:
            assert b"swagger-ui" in page.read(), "/docs has no Swagger UI"
        if client_python is not None:
            check = [client_python, __file__, "client", url, f"127.0.0.1:{grpc_port}"]
            subprocess.run(check, check=True, timeout=300)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        code = server.wait(timeout=60)
    assert code == 0, f"the server exited with {code} on SIGINT"


def check_client(http_url: str, grpc_address: str) -> None:
    from modelpod import Client

    for address in (http_url, grpc_address):
        with Client(address, model="iris") as iris:
            label = iris.predict(features=[5.1, 3.5, 1.4, 0.2])["label"]
            assert label == "setosa", (address, label)
            print(f"Client({address!r}): {label}")


def check_store(url: str | None = None) -> None:
    from modelpod import Model, Store

    class Greeter(Model):
        def predict(self, name: str) -> str:
            return f"{self.config['greeting']}, {name}!"

    # The store records the class by its import path: this file, importable as `check`.
    Greeter.__module__, Greeter.__qualname__ = "check", "Greeter"
    sys.modules.setdefault("check", sys.modules[__name__])
    globals()["Greeter"] = Greeter
    data = Path(tempfile.mkdtemp(prefix="modelpod-store-"))
    store = Store(url, data_path=data / "store")
    try:
        name = f"greeter-{os.getpid()}"
        record = store.apply(Greeter("1", name=name, data_path=data / "work", greeting="Bonjour"))
        assert record.class_ref == "check:Greeter", record
        assert not record.pickled, record
        assert store.load(record.identifier, record.version).predict(name="Ada") == "Bonjour, Ada!"
        print(f"applied and loaded {record.reference} in {store}")
        store.remove(record.identifier)
    finally:
        store.close()


def check_postgres() -> None:
    url = os.environ.get("MODELPOD_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError as error:
        print(f"skipped: PostgreSQL is not listening on 127.0.0.1:5432 ({error})")
        return
    check_store(url)


def check_ray() -> None:
    """`modelpod serve --backend ray` starts a local Ray cluster and answers through Ray's proxy."""
    port = free_port()
    command = [sys.executable, "-m", "modelpod", "serve", "--backend", "ray", "--http-port", str(port),
               "--ray-replica-cpus", "0.5", "examples/functions.py:add"]  # fmt: skip
    environment = dict(os.environ, MODELPOD_DATA_PATH=tempfile.mkdtemp(prefix="modelpod-ray-"),
                       RAY_USAGE_STATS_ENABLED="0")  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, env=environment, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, 300)
        assert post(f"{url}/models/add/predict", {"a": 2, "b": 3.5}) == 5.5
        print("Ray Serve answered 2 + 3.5")
    finally:
        os.killpg(server.pid, signal.SIGINT)
        code = server.wait(timeout=120)
    assert code == 0, f"the Ray backend exited with {code} on SIGINT"


def check_torch() -> None:
    import numpy as np
    import torch

    from modelpod import Runner

    sys.path.insert(0, str(ROOT / "examples"))
    from torch_module import TinyTorch

    with Runner(TinyTorch, data_path=tempfile.mkdtemp(prefix="modelpod-torch-"), device="cpu") as runner:
        answer = runner.predict(x=torch.ones(2, 8))
        assert isinstance(answer, torch.Tensor), answer
        assert tuple(answer.shape) == (2, 3), answer
        assert runner.predict(x=np.ones((1, 8), dtype=np.float32)).shape == (1, 3)
    print(f"torch {torch.__version__}: TinyTorch answered a tensor and an array")


def check_embeddings() -> None:
    from modelpod import Runner

    sys.path.insert(0, str(ROOT / "examples"))
    from embeddings import DIMENSIONS, Embeddings

    with Runner(Embeddings, data_path=tempfile.mkdtemp(prefix="modelpod-embed-"), device="cpu") as runner:
        first, second = runner.predict_batch([{"text": "a cat"}, {"text": "a kitten"}])
    assert len(first) == len(second) == DIMENSIONS
    similarity = sum(a * b for a, b in zip(first, second, strict=True))
    assert similarity > 0.5, similarity
    print(f"embeddings: cosine('a cat', 'a kitten') = {similarity:.2f}")


CHECKS: dict[str, Callable[..., None]] = {
    "core": check_core,
    "server": check_server,
    "client": check_client,
    "store": check_store,
    "postgres": check_postgres,
    "ray": check_ray,
    "torch": check_torch,
    "embeddings": check_embeddings,
}

if __name__ == "__main__":
    installed_modelpod()
    CHECKS[sys.argv[1]](*sys.argv[2:])
    print(f"ok: {sys.argv[1]}")
