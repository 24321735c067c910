"""Payload capture: `modelpod serve --capture MODEL=RATE[+errors]` writes a share of the requests, with
their inputs and outputs, as JSON lines under the data path; off the request path, through a bounded
queue that drops (and counts) rather than makes a request wait."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelpod.client import AsyncClient, Client
from modelpod.observe import capture_files
from modelpod.observe.capture import Capture, Sampling, parse_capture
from modelpod.observe.capture_codec import Encoder, Incomplete, Oversized, decode, lightened
from modelpod.observe.events import RequestDone

from conftest import ROOT, ServerProcess, StartServer

SERVABLE = ROOT / "tests" / "servable_capture.py"


def model(name: str) -> str:
    return f"{SERVABLE}:{name}"


def captured(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    """Every record of `name`, read after the server stopped (its writer wrote what was queued)."""
    assert server.stop() == 0, server.output
    return list(capture_files.records(server.data_path / "_capture", name))


def metric(http: httpx.Client, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when it is not there)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    assert wanted is not None
    return 0.0


def test_rate_one_keeps_every_request_exactly(start_server: StartServer) -> None:
    server = start_server(model("Scorer"), args=("--capture", "scorer=1"))
    arrays = [np.arange(i + 1, dtype=np.float32).reshape(1, -1) for i in range(10)]
    with Client(server.http_url, model="scorer") as client:
        answers = [client.predict(x=x, secret=f"s{i}") for i, x in enumerate(arrays)]
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        sent = http.post("/models/scorer/predict", json={"x": [1, 2]}, headers={"x-request-id": "r-42"})
        assert sent.status_code == 200
    records = captured(server, "scorer")
    assert len(records) == 11
    by_id = {r["request_id"]: r for r in records}
    assert by_id["r-42"]["inputs"] == [{"x": [1, 2]}]
    assert by_id["r-42"]["outputs"][0]["total"] == 3.0
    native = [r for r in records if r["request_id"] != "r-42"]
    for record, x, answer in zip(native, arrays, answers, strict=True):
        assert record["model"] == "scorer"
        assert record["version"] == "1"
        assert record["outcome"] == "ok"
        assert record["seconds"] > 0
        assert record["time"] > 0
        assert record["truncated"] == 0
        (call,) = decode(record["inputs"])
        assert call["x"].dtype == np.float32
        assert np.array_equal(call["x"], x)
        assert call["secret"] == "***"  # the model's redact hook ran before it was written
        (output,) = decode(record["outputs"])
        assert np.array_equal(output["y"], answer["y"])
        assert output["secret_length"] == answer["secret_length"]


def test_v2_rows_are_one_call_each_and_tensor_models_keep_their_arrays(start_server: StartServer) -> None:
    server = start_server(model("Scorer"), model("Doubling"), args=("--capture", "*=1"))
    x = np.array([[1.5, 2.5], [3.0, 4.0]], dtype=np.float32)
    with Client(server.http_url, model="doubling") as client:
        assert np.array_equal(client.infer({"x": x})["y"], x * 2)
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]},
            {"name": "note", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
        ]
    }
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert http.post("/v2/models/scorer/infer", json=body).status_code == 200
    server.stop()
    (tensor,) = capture_files.records(server.data_path / "_capture", "doubling")
    assert tensor["protocol"] != ""
    assert np.array_equal(decode(tensor["inputs"])[0]["x"], x)
    assert np.array_equal(decode(tensor["outputs"])[0]["y"], x * 2)
    (rows,) = capture_files.records(server.data_path / "_capture", "scorer")
    calls = decode(rows["inputs"])
    assert [call["note"] for call in calls] == ["a", "b"]  # one keyword call per row
    assert [answer["total"] for answer in decode(rows["outputs"])] == [1.0, 2.0]


def test_a_pipeline_is_captured_as_asked_not_its_steps(start_server: StartServer) -> None:
    steps = [f"{ROOT / 'tests' / 'servable_pipeline.py'}:{name}" for name in ("Third", "Describe", "Shout")]
    server = start_server(*steps, args=("--pipeline", "loud=third,describe,shout", "--capture", "*=1"))
    with Client(server.http_url, model="loud") as client:
        assert client.predict(text="Hey") == "HEY: FRACTION 1!"
    (record,) = captured(server, "loud")
    assert record["inputs"] == [{"text": "Hey"}]
    assert record["outputs"] == ["HEY: FRACTION 1!"]
    assert capture_files.models(server.data_path / "_capture") == ["loud"]  # its steps are not requests


def test_a_sampled_share_under_load(start_server: StartServer) -> None:
    server = start_server(model("Scorer"), args=("--capture", "scorer=0.1"))
    total = 400

    async def load() -> None:
        async with AsyncClient(server.http_url, model="scorer") as client:
            for start in range(0, total, 50):
                await asyncio.gather(*(client.predict(x=[i]) for i in range(start, start + 50)))

    asyncio.run(load())
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert metric(http, "modelpod_capture_records_total", model="scorer", outcome="dropped") == 0
        written = metric(http, "modelpod_capture_records_total", model="scorer", outcome="written")
    records = captured(server, "scorer")
    # Binomial(400, 0.1): mean 40, deviation 6; outside 10..80 happens about once in 10^8 runs.
    assert 10 <= len(records) <= 80
    assert written <= len(records)  # what was written by the scrape, all of it read back at the end
    assert len({r["request_id"] for r in records}) == len(records)


def test_rate_one_under_load_loses_nothing_while_the_queue_has_room(start_server: StartServer) -> None:
    server = start_server(model("Scorer"), args=("--capture", "scorer=1"))
    total = 300

    async def load() -> None:
        async with AsyncClient(server.http_url, model="scorer") as client:
            for start in range(0, total, 60):
                await asyncio.gather(*(client.predict(x=[i]) for i in range(start, start + 60)))

    asyncio.run(load())
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert metric(http, "modelpod_capture_records_total", model="scorer", outcome="dropped") == 0
    records = captured(server, "scorer")
    assert sorted(r["inputs"][0]["x"][0] for r in records) == list(range(total))  # each once


def test_without_capture_nothing_is_kept(start_server: StartServer) -> None:
    server = start_server(model("Scorer"))
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for i in range(3):
            assert http.post("/models/scorer/predict", json={"x": [i]}).status_code == 200
        assert "modelpod_capture" not in http.get("/metrics").text
    assert server.stop() == 0
    assert not (server.data_path / "_capture").exists()


def test_every_error_and_only_errors(start_server: StartServer) -> None:
    server = start_server(model("Scorer"), args=("--capture", "scorer=errors"))
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for i in range(5):
            assert http.post("/models/scorer/predict", json={"x": [i]}).status_code == 200
        failed = http.post("/models/scorer/predict", json={"x": [-1]}, headers={"x-request-id": "bad-1"})
        assert failed.status_code == 400
    (record,) = captured(server, "scorer")
    assert record["request_id"] == "bad-1"
    assert record["outcome"] == "invalid_input"
    assert "must not be negative" in record["error"]
    assert record["outputs"] is None
    assert record["inputs"] == [{"x": [-1]}]


def test_a_full_queue_drops_and_counts_and_requests_never_wait(start_server: StartServer) -> None:
    server = start_server(
        model("SlowRedact"), args=("--capture", "slowredact=1", "--capture-queue-size", "2")
    )
    total = 30

    async def burst() -> list[Any]:
        async with AsyncClient(server.http_url, model="slowredact") as client:
            # Each capture takes 1 s to write: 30 at once bound to overflow a queue of two. The
            # requests themselves are answered meanwhile (the bounded wait is the client's timeout).
            return await asyncio.wait_for(asyncio.gather(*(client.predict(n=i) for i in range(total))), 20)

    assert [a["n"] for a in asyncio.run(burst())] == list(range(total))
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        dropped = metric(http, "modelpod_capture_records_total", model="slowredact", outcome="dropped")
    assert dropped > 0  # a queue of 2 and a writer at one a second
    records = captured(server, "slowredact")
    assert len(records) + dropped == total  # every sampled request written or counted as dropped


def test_large_values_are_stored_as_their_size_and_fields_dropped(start_server: StartServer) -> None:
    server = start_server(
        model("Scorer"),
        args=("--capture", "scorer=1", "--capture-max-value-size", "100", "--capture-drop", "note"),
    )
    with Client(server.http_url, model="scorer") as client:
        client.predict(x=np.ones(1000), note="private")
        client.predict(x=np.ones(3), note="private")
    big, small = captured(server, "scorer")
    assert big["truncated"] == 2  # the input and its doubled output
    facts = big["inputs"][0]["x"]["__ndarray__"]
    assert facts == {"dtype": "<f8", "shape": [1000], "nbytes": 8000, "truncated": True}
    with pytest.raises(Incomplete, match="8000 bytes"):
        decode(big["inputs"])
    assert "note" not in big["inputs"][0]
    assert "note" not in big["outputs"][0]
    assert small["truncated"] == 0
    assert np.array_equal(decode(small["inputs"])[0]["x"], np.ones(3))


def test_files_rotate_by_size_keeping_the_newest(start_server: StartServer) -> None:
    server = start_server(
        model("Scorer"),
        args=("--capture", "scorer=1", "--capture-file-size", "1000", "--capture-files", "3"),
    )
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for i in range(40):
            assert http.post("/models/scorer/predict", json={"x": [i]}).status_code == 200
    records = captured(server, "scorer")
    files = sorted((server.data_path / "_capture" / "scorer").glob("capture-*.jsonl"))
    assert len(files) == 3
    assert all(f.stat().st_size <= 1000 for f in files)
    totals = [r["outputs"][0]["total"] for r in records]
    assert totals == sorted(totals)
    assert totals[-1] == 39.0
    assert len(totals) < 40


def test_capture_list_and_show(start_server: StartServer) -> None:
    server = start_server(model("Scorer"), args=("--capture", "scorer=1"))
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for i in range(3):
            http.post("/models/scorer/predict", json={"x": [i]}, headers={"x-request-id": f"id-{i}"})
    server.stop()
    where = ("--data-path", str(server.data_path))
    listed = _cli("capture", "list", *where)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"scorer\s+3\s", listed.stdout), listed.stdout
    shown = _cli("capture", "show", "scorer", "id-1", *where)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["inputs"] == [{"x": [1]}]
    missing = _cli("capture", "show", "scorer", "nope", *where)
    assert missing.returncode == 1
    assert "no captured request 'nope'" in missing.stderr


def test_a_mistaken_capture_flag_stops_the_server_with_a_message() -> None:
    made = _cli("serve", model("Scorer"), "--capture", "scorer=2")
    assert made.returncode == 2
    assert "expected MODEL=RATE[+errors] with RATE from 0 to 1" in made.stderr


def test_a_waiting_capture_holds_no_large_tensor() -> None:
    class Stuck:
        """A destination that takes no record until released: the queue fills behind it."""

        def __init__(self) -> None:
            self.release = threading.Event()
            self.lines: list[str] = []

        def write(self, entries: Sequence[tuple[Any, bytes]]) -> None:
            self.release.wait(10)
            self.lines += [line.decode() for _, line in entries]

        def flush(self) -> None:
            return None

        def close(self) -> None:
            return None

    sink = Stuck()
    capture = Capture({"m": Sampling(1.0)}, sink, queue_size=4, max_value_bytes=100)
    big = np.zeros(10_000)
    held = weakref.ref(big)
    for _ in range(3):
        capture.on_request(RequestDone("m", "1", "http", "ok", 0.01, inputs=[{"x": big}], outputs=[{"y": 1}]))
    del big
    gc.collect()
    assert held() is None  # only its description waits
    sink.release.set()
    capture.close()
    assert len(sink.lines) == 3
    assert '"nbytes":80000,"truncated":true' in sink.lines[0]


def test_a_destination_that_fails_counts_its_records_as_failed_and_the_writer_goes_on() -> None:
    class Flaky:
        """Refuses the first round it is given (a database gone away), takes the rest."""

        def __init__(self) -> None:
            self.rounds = 0
            self.lines: list[bytes] = []

        def write(self, entries: Sequence[tuple[Any, bytes]]) -> None:
            self.rounds += 1
            if self.rounds == 1:
                raise ConnectionError("the database went away")
            self.lines += [line for _, line in entries]

        def flush(self) -> None:
            return None

        def close(self) -> None:
            return None

    sink = Flaky()
    capture = Capture({"m": Sampling(1.0)}, sink)
    done = RequestDone("m", "1", "http", "ok", 0.01, inputs=[{"x": 1}], outputs=[{"y": 2}])
    for _ in range(3):
        capture.on_request(done)
    deadline = time.monotonic() + 10
    while capture.counts().get(("m", "failed")) != 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # the writer's next round
    capture.on_request(done)
    capture.close()
    assert capture.counts() == {("m", "failed"): 3, ("m", "written"): 1}
    assert [json.loads(line)["inputs"] for line in sink.lines] == [[{"x": 1}]]


def test_values_json_has_no_literal_for_come_back_as_they_were(tmp_path: Path) -> None:
    """A NaN, an infinity or an integer past 64 bits in a keyword model's values: written so that
    reading the record gives them back (the fast writer would make the floats null, and refuse the
    integer)."""
    capture = Capture({"m": Sampling(1.0)}, capture_files.CaptureFiles(tmp_path))
    odd_floats = [{"score": float("nan"), "bound": float("-inf"), "x": [0.5, 1.5]}]
    for inputs, outputs in (
        ([{"n": 1}], odd_floats),
        ([{"n": 2**70}], [{"y": 1}]),
        ([{"n": 1}], [{"y": 0.25}]),
    ):
        capture.on_request(RequestDone("m", "1", "http", "ok", 0.01, inputs=inputs, outputs=outputs))
    capture.close()
    floats, big, plain = capture_files.records(tmp_path, "m")
    out = floats["outputs"][0]
    assert np.isnan(out["score"])
    assert (out["bound"], out["x"]) == (float("-inf"), [0.5, 1.5])
    assert big["inputs"] == [{"n": 2**70}]
    assert (plain["inputs"], plain["outputs"], plain["truncated"]) == ([{"n": 1}], [{"y": 0.25}], 0)


def test_ray_replicas_refuse_a_capture_they_would_not_keep() -> None:
    made = _cli("serve", model("Scorer"), "--backend", "ray", "--capture", "scorer=1")
    assert made.returncode == 2
    assert "--capture is not available with --backend ray yet" in made.stderr


def test_policies_and_the_codec() -> None:
    assert parse_capture("iris=0.1+errors; *=0.01") == {
        "iris": Sampling(0.1, True),
        "*": Sampling(0.01, False),
    }
    assert parse_capture("a=errors") == {"a": Sampling(0.0, True)}
    for wrong in ("iris", "iris=x", "iris=0.5+all", "=1", "iris=-0.1"):
        with pytest.raises(ValueError, match="MODEL=RATE"):
            parse_capture(wrong)
    values = {
        "f16": np.array([1.5, -2], dtype=np.float16),
        "words": np.array([["a", "b"]], dtype=object),
        "raw": b"\x00\xff",
        "scalar": np.int64(7),
        "nested": [{"t": (1, 2)}],
    }
    back = decode(json.loads(json.dumps(Encoder(None).encode(values))))
    assert back["f16"].dtype == np.float16
    assert np.array_equal(back["f16"], values["f16"])
    assert back["words"].tolist() == [["a", "b"]]
    assert back["raw"] == b"\x00\xff"
    assert back["scalar"] == 7
    assert back["nested"] == [{"t": [1, 2]}]
    with pytest.raises(Incomplete):
        decode(Encoder(None).encode(object()))
    big, small = np.zeros(1000, np.uint8), np.zeros(10, np.uint8)
    call = {"big": big, "small": small}
    light = lightened(call, 100)
    assert light["big"] == Oversized("|u1", (1000,), 1000)  # the queue holds no large data
    assert light["small"] is small
    assert call["big"] is big  # the request's own arguments untouched
    single = {"small": small}
    assert lightened(single, 100) is single  # nothing to replace: not even copied
    assert lightened(b"x" * 101, 100) == Oversized("bytes", (), 101)


def _cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelpod", *arguments],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


POSTGRES_URL = os.environ.get("MODELPOD_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def database(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'captures.db'}"
    from sqlalchemy import create_engine

    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            pass
    except Exception as error:  # no driver, no server: SQLite needs neither
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL} ({type(error).__name__})")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_captures_in_a_store_database(start_server: StartServer, tmp_path: Path, kind: str) -> None:
    url = database(kind, tmp_path)
    name = f"scorer{uuid.uuid4().hex[:8]}"  # a shared PostgreSQL database: rows of this test alone
    served = f"{name}={model('Scorer')}"
    server = start_server(served, args=("--capture", f"{name}=1", "--capture-store", url))
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for i in range(5):
            sent = http.post(
                f"/models/{name}/predict",
                json={"x": [i], "secret": "pw"},
                headers={"x-request-id": f"{name}-{i}"},
            )
            assert sent.status_code == 200
    assert server.stop() == 0
    assert not (server.data_path / "_capture").exists()  # the database instead of files
    listed = _cli("capture", "list", "--json", "--capture-store", url)
    assert listed.returncode == 0, listed.stderr
    (summary,) = [s for s in json.loads(listed.stdout) if s["model"] == name]
    assert (summary["records"], summary["errors"]) == (5, 0)
    shown = _cli("capture", "show", name, f"{name}-3", "--capture-store", url)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["inputs"] == [{"x": [3], "secret": "***"}]
    assert record["outputs"][0]["total"] == 3.0
    replaying = start_server(served, data_path=tmp_path / "again")
    replay = _cli(
        "replay", replaying.http_url, "--model", name, "--against", "1", "--json", "--capture-store", url
    )
    assert replay.returncode == 0, replay.stderr
    report = json.loads(replay.stdout)
    assert report["requests"] == 5
    assert report["outputs"]["total"]["agreed"] == 5
    assert report["outputs"]["secret_length"]["agreed"] == 0  # "pw" was captured as "***"
