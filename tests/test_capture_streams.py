"""Payload capture of what is not one call and one answer: streamed answers (native HTTP and gRPC),
OpenAI's /v1 routes (embeddings; completions, which are streams of text pieces) and a V2 request to
a served pipeline; and `modelpod replay` of those captures against a server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelpod.client import Client
from modelpod.observe import capture_files
from modelpod.observe.capture_codec import decode
from modelpod.observe.item_tape import ItemTape

from conftest import ROOT, ServerProcess, StartServer

COUNTER = f"{ROOT / 'tests' / 'servable_streaming.py'}:Counter"
OPENAI = [f"{ROOT / 'tests' / 'servable_openai.py'}:{name}" for name in ("Words", "Vectors")]
STEPS = [f"{ROOT / 'tests' / 'servable_pipeline.py'}:{name}" for name in ("Third", "Describe", "Shout")]


def records(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    """Every record of `name`, read after the server stopped (its writer wrote what was queued)."""
    assert server.stop() == 0, server.output
    return list(capture_files.records(server.data_path / "_capture", name))


def replay(address: str, model: str, data_path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "modelpod", "replay", address, "--model", model, "--against", "1",
         "--json", "--data-path", str(data_path)],
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_streams_are_captured_item_by_item_within_the_size_limit_and_replayed(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(
        COUNTER, args=("--capture", "counter=1", "--capture-max-value-size", "100"), data_path=tmp_path / "a"
    )
    with Client(server.http_url, model="counter") as client:
        assert list(client.predict_stream(n=3)) == [{"i": 0}, {"i": 1}, {"i": 2}]
    with Client(server.grpc_address, model="counter") as client:
        assert list(client.predict_stream(n=2)) == [{"i": 0}, {"i": 1}]
        # Ten arrays of 24 bytes: four fit in the 100 bytes a capture keeps of a value.
        long = list(client.predict_stream(n=10, arrays=True))
    http_stream, grpc_stream, arrays = records(server, "counter")
    assert http_stream["inputs"] == [{"n": 3}]
    assert http_stream["outputs"] == [[{"i": 0}, {"i": 1}, {"i": 2}]]
    assert http_stream["stream"] == {"items": 3, "kept": 3, "closed_by_caller": False}
    assert (http_stream["protocol"], grpc_stream["protocol"]) == ("http", "grpc")
    assert grpc_stream["outputs"] == [[{"i": 0}, {"i": 1}]]
    assert http_stream["truncated"] == grpc_stream["truncated"] == 0
    assert arrays["stream"] == {"items": 10, "kept": 4, "closed_by_caller": False}
    assert arrays["truncated"] == 6  # the items left out, said so
    kept = decode(arrays["outputs"])[0]
    assert all(np.array_equal(a, b) for a, b in zip(kept, long[:4], strict=True))

    again = start_server(COUNTER, data_path=tmp_path / "b")
    report = replay(again.http_url, "counter", server.data_path)
    assert report["requests"] == 2
    assert report["skipped"] == {"stream items over the capture's size limit": 1}
    assert report["outputs"] == {"items": {"agreed": 2, "compared": 2, "agreement": 1.0}}
    assert report["agreement"] == 1.0


def test_openai_routes_are_captured_and_replayed(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(*OPENAI, args=("--capture", "*=1"), data_path=tmp_path / "a")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        vectors = http.post("/v1/embeddings", json={"model": "vectors", "input": ["ab", "c"]})
        assert vectors.status_code == 200, vectors.text
        whole = http.post("/v1/completions", json={"model": "words", "prompt": "a b c", "max_tokens": 2})
        assert whole.json()["choices"][0]["text"] == "a b "
        stopped = {"model": "words", "prompt": "one two three four", "stop": ["three"], "stream": True}
        assert http.post("/v1/completions", json=stopped).status_code == 200
    server.stop()
    (embedding,) = capture_files.records(server.data_path / "_capture", "vectors")
    assert embedding["protocol"] == "openai"
    assert embedding["inputs"] == [{"text": "ab"}, {"text": "c"}]  # one call per text, as batched
    assert embedding["outputs"] == [[2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0]]
    assert "stream" not in embedding
    limited, cut = capture_files.records(server.data_path / "_capture", "words")
    assert limited["inputs"] == [{"prompt": "a b c", "max_tokens": 2}]
    assert limited["outputs"] == [["a ", "b "]]  # the model's pieces
    assert limited["stream"] == {"items": 2, "kept": 2, "closed_by_caller": False}
    assert cut["outputs"] == [["one ", "two ", "three "]]  # as far as the stop sequence
    assert cut["stream"] == {"items": 3, "kept": 3, "closed_by_caller": True}

    again = start_server(*OPENAI, data_path=tmp_path / "b")
    texts = replay(again.http_url, "words", server.data_path)
    assert texts["outputs"] == {"text": {"agreed": 2, "compared": 2, "agreement": 1.0}}
    embeddings = replay(again.http_url, "vectors", server.data_path)
    assert embeddings["outputs"] == {"answer": {"agreed": 2, "compared": 2, "agreement": 1.0}}


def test_a_v2_request_to_a_pipeline_is_captured_as_its_calls(start_server: StartServer) -> None:
    server = start_server(*STEPS, args=("--pipeline", "loud=third,describe,shout", "--capture", "*=1"))
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["Hey", "Hello"]}]}
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        answer = http.post("/v2/models/loud/infer", json=body)
    assert answer.status_code == 200, answer.text
    (record,) = records(server, "loud")
    assert record["protocol"] == "http_v2"
    assert record["inputs"] == [{"text": "Hey"}, {"text": "Hello"}]  # as its first model takes them
    assert record["outputs"] == ["HEY: FRACTION 1!", "HELLO: FRACTION 5/3!"]
    assert record["outcome"] == "ok"


def test_a_tape_keeps_the_first_items_within_its_budget() -> None:
    tape = ItemTape(10)
    for item in ("abcd", "efgh", "ijkl", "m"):
        tape.add(item)
    assert (tape.items, tape.count, tape.complete) == (["abcd", "efgh"], 4, False)  # "m" comes after a gap
    whole = ItemTape(None)
    whole.add(np.zeros(1000))
    assert whole.complete
