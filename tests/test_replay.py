"""`modelpod replay`: the iris example's captured traffic sent again to a retrained version on a real
server; the agreement it reports checked against the two versions' saved estimators, run here."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelpod.client import Client
from modelpod.observe import capture_files

from conftest import ROOT, StartServer, example

IRIS = example("iris.py:IrisClassifier")
SCORER = f"{ROOT / 'tests' / 'servable_capture.py'}:Scorer"


def iris_rows() -> np.ndarray:
    from sklearn.datasets import load_iris

    return np.asarray(load_iris().data)


def replay(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelpod", "replay", *arguments],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def answers_of(estimator_file: Path, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Labels and probabilities straight from a version's saved estimator, no server involved."""
    with estimator_file.open("rb") as file:
        saved = pickle.load(file)
    probabilities = saved["estimator"].predict_proba(rows)
    return [saved["labels"][i] for i in probabilities.argmax(axis=1)], probabilities


def test_replay_against_a_retrained_version_reports_what_an_independent_computation_finds(
    start_server: StartServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    captured = start_server(IRIS, args=("--capture", "iris=1"), data_path=data)
    rows = iris_rows()
    with Client(captured.http_url, model="iris") as client:
        client.version("2").initialize(C=0.002)  # heavily regularised: some labels change
        for row in rows:
            client.predict(features=row.tolist())
    with httpx.Client(base_url=captured.http_url, timeout=30) as http:
        refused = http.post("/models/iris/predict", json={"features": [1.0]})
        assert refused.status_code == 400  # captured as failed: not replayed
    assert captured.stop() == 0
    # The replay's own requests go to a server that does not capture them.
    server = start_server(IRIS, data_path=data)
    done = replay(server.http_url, "--model", "iris", "--against", "2", "--json", "--data-path", str(data))
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)

    records = [
        json.loads(line) for f in sorted((data / "_capture" / "iris").glob("*.jsonl")) for line in f.open()
    ]
    served = [r for r in records if r["outcome"] == "ok"]
    features = np.array([r["inputs"][0]["features"] for r in served])
    then_labels, then_p = answers_of(data / "iris" / "1" / "estimator.pkl", features)
    now_labels, now_p = answers_of(data / "iris" / "2" / "estimator.pkl", features)
    assert [r["outputs"][0]["label"] for r in served] == then_labels  # the capture kept the answers
    same_label = [a == b for a, b in zip(then_labels, now_labels, strict=True)]
    same_p = [bool(np.allclose(a, b, rtol=1e-5, atol=1e-8)) for a, b in zip(then_p, now_p, strict=True)]
    assert 0 < sum(same_label) < len(served)  # the retrained version changes some labels

    assert report["requests"] == len(served) == len(rows)
    assert report["errors"] == 0
    assert report["skipped"] == {"failed when captured": 1}
    assert report["outputs"]["label"] == {
        "agreed": sum(same_label),
        "compared": len(served),
        "agreement": sum(same_label) / len(served),
    }
    assert report["outputs"]["probabilities"]["agreed"] == sum(same_p)
    both = [a and b for a, b in zip(same_label, same_p, strict=True)]
    assert report["agreement"] == sum(both) / len(served)
    differing = {r["request_id"] for r, agreed in zip(served, both, strict=True) if not agreed}
    assert {d["request_id"] for d in report["disagreements"]} == differing
    latency = report["latency_seconds"]
    assert latency["replayed"]["p50"] > 0
    assert latency["captured"]["p99"] >= latency["captured"]["p50"] > 0

    other_ways(server.http_url, data, report, len(rows))


def other_ways(address: str, data: Path, report: dict[str, Any], captured: int) -> None:
    """The same traffic replayed in this process, against the version that answered it, as a
    table, and from a time after it."""
    # In this process instead of on a server (--local): the same version, the same findings.
    local = replay("--local", IRIS, "--model", "iris", "--against", "2", "--json", "--data-path", str(data))
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)["outputs"] == report["outputs"]
    assert json.loads(local.stdout)["address"] == f"{IRIS} (in-process)"

    # Against the version that answered them: every answer agrees (the newest 10 with --limit).
    same = replay(address, "--model", "iris", "--against", "1", "--limit", "10", "--json",
                  "--data-path", str(data))  # fmt: skip
    assert same.returncode == 0, same.stderr
    newest = json.loads(same.stdout)
    assert newest["agreement"] == 1.0
    assert newest["requests"] == 9  # the newest 10 end with the failed one, skipped
    assert newest["skipped"] == {"failed when captured": 1}
    # As a table, with a bar to clear: under it, exit 1.
    table = replay(address, "--model", "iris", "--against", "2", "--fail-under", "0.999",
                   "--data-path", str(data))  # fmt: skip
    assert table.returncode == 1, table.stderr
    assert f"replayed {captured} requests of iris against version 2" in table.stdout
    assert "probabilities" in table.stdout
    assert "p99" in table.stdout
    late = replay(address, "--model", "iris", "--against", "2", "--since", "2999-01-01T00:00",
                  "--json", "--data-path", str(data))  # fmt: skip
    assert json.loads(late.stdout)["requests"] == 0


def test_arrays_replay_exactly_and_truncated_requests_are_skipped(start_server: StartServer) -> None:
    server = start_server(SCORER, args=("--capture", "scorer=1", "--capture-max-value-size", "1000"))
    with Client(server.http_url, model="scorer") as client:
        client.predict(x=np.linspace(0, 1, 7, dtype=np.float32))
        client.predict(x=np.ones(500))  # 4000 bytes: stored as its size only
        client.predict(x=np.arange(3, dtype=np.int16), secret="abcd")  # captured redacted: "***"
    done = replay(server.http_url, "--model", "scorer", "--against", "1", "--json",
                  "--data-path", str(server.data_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["requests"] == 2
    assert report["skipped"] == {"values over the capture's size limit": 1}
    assert report["agreement"] == 0.5
    tallies = {name: (t["agreed"], t["compared"]) for name, t in report["outputs"].items()}
    assert tallies == {"y": (2, 2), "total": (2, 2), "note": (2, 2), "secret_length": (1, 2)}
    assert report["disagreements"][0]["outputs"] == ["secret_length"]  # what redaction changed
    # Over gRPC. The server captured the first replay's two requests too (their secret already
    # "***", so their secret_length agrees): four to replay, one disagreeing.
    folder = server.data_path / "_capture"
    deadline = time.monotonic() + 10  # written as soon as the writer sees them: a bounded wait
    while len(list(capture_files.records(folder, "scorer"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    over_grpc = replay(server.grpc_address, "--model", "scorer", "--against", "1", "--json",
                       "--data-path", str(server.data_path))  # fmt: skip
    assert over_grpc.returncode == 0, over_grpc.stderr
    again = json.loads(over_grpc.stdout)
    assert again["requests"] == 4
    assert again["address"] == server.grpc_address
    assert {name: (t["agreed"], t["compared"]) for name, t in again["outputs"].items()} == {
        "y": (4, 4),
        "total": (4, 4),
        "note": (4, 4),
        "secret_length": (3, 4),
    }


def test_replay_says_what_is_wrong() -> None:
    bad = replay("http://127.0.0.1:9", "--model", "iris", "--against", "2", "--since", "yesterday")
    assert bad.returncode == 1
    assert "--since 'yesterday'" in bad.stderr
    both = replay("http://127.0.0.1:9", "--local", IRIS, "--model", "iris", "--against", "2")
    assert both.returncode == 2
    assert "give the server's ADDRESS, or --local MODEL" in both.stderr
