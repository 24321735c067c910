"""The README's Python blocks run as written, so the README cannot drift from the code."""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterator

import pytest

from conftest import ROOT, ServerProcess, example, launch

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
FIRST_COMMANDS = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)[:2]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The README's examples talk to a server on the default ports, as a reader's would."""
    for port in (8080, 50051):
        if not _port_free(port):
            pytest.fail(f"port {port} is in use: the README examples need modelpod's default ports")
    models = (example("iris.py:IrisClassifier"), example("mlp.py:MLP"))
    models += (example("chargen.py:CharGen"), example("embeddings.py:Embeddings"))  # OpenAI's API
    args = ("--http-port", "8080", "--grpc-port", "50051")
    server = launch(models, tmp_path_factory.mktemp("readme") / "appdata", args)
    yield server
    assert server.stop() == 0


def test_readme_starts_with_the_two_commands() -> None:
    serve, test = (" ".join(block.split()) for block in FIRST_COMMANDS)
    assert serve == 'pip install ".[server,examples]" && modelpod serve examples/iris.py:IrisClassifier'
    assert test == 'pip install torch==2.13.0 -e ".[dev]" && pytest --cov'
    assert README.index(FIRST_COMMANDS[1]) < README.index("## A 30-second tour")


def test_ci_runs_the_readme_test_command() -> None:
    assert "pytest --cov" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_python_block_runs(
    block: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "127.0.0.1:8080" in block or "127.0.0.1:50051" in block:
        request.getfixturevalue("default_server")
    monkeypatch.chdir(ROOT)  # as a reader runs them: from the repository's root
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
