"""Pipelines of served models on a real `modelpod serve` process, over HTTP and gRPC."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from modelpod import Client, InvalidInput, ModelError, Timeout

from conftest import ROOT, ServerProcess, StartServer, example, launch, servable

STEPS = ROOT / "tests" / "servable_pipeline.py"
EXAMPLE = ("Scale", "Linear", "Tree", "Label", "IrisPipeline")
MODELS = (
    *(example(f"pipeline.py:{name}") for name in EXAMPLE),
    *(f"{STEPS}:{name}" for name in ("Third", "Describe", "Shout", "Whisper", "Fails", "Refuses", "Nap")),
    *(f"{STEPS}:{name}" for name in ("Chain", "ByLength", "BadChoice")),
)
DECLARED = (
    "--pipeline", "declared=third,describe,shout|whisper",
    "--pipeline", "failing=third,describe,fails",
    "--pipeline", "refusing=third,describe,refuses,shout",
    "--pipeline", "sleepy=nap,shout",
)  # fmt: skip
FAILED_STEP = "pipeline 'failing' step 2 (fails): model fails:1 raised RuntimeError"
SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch(MODELS, tmp_path_factory.mktemp("pipeline") / "appdata", DECLARED)
    yield process
    assert process.stop() == 0, process.output


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


def metric_samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def requests_of(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], model: str, protocol: str,
                outcome: str = "ok") -> float:  # fmt: skip
    labels = {"model": model, "version": "1", "protocol": protocol, "outcome": outcome}
    return samples.get(("modelpod_requests_total", tuple(sorted(labels.items()))), 0.0)


def successes(http: httpx.Client, model: str) -> int:
    stats = http.get(f"/v2/models/{model}/stats").json()["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


# -- the three-step example through both transports ----------------------------------------------


def test_native_http_runs_the_three_steps(http: httpx.Client) -> None:
    answer = http.post("/models/iris-pipeline/predict", json={"x": [SETOSA, VIRGINICA]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["label"] == ["setosa", "virginica"]
    assert all(0.5 < p <= 1 for p in answer.json()["confidence"])
    tree = http.post("/models/iris-pipeline/predict?branch=tree", json={"x": [VIRGINICA]}).json()
    assert tree["label"] == ["virginica"]


def test_open_inference_protocol_over_http_and_grpc(server: ServerProcess) -> None:
    rows = np.array([SETOSA, VIRGINICA, SETOSA], dtype=np.float32)
    http_client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    x = httpclient.InferInput("x", [3, 4], "FP32")
    x.set_data_from_numpy(rows, binary_data=True)
    over_http = http_client.infer("iris-pipeline", [x])
    with grpcclient.InferenceServerClient(server.grpc_address) as grpc_client:
        gx = grpcclient.InferInput("x", [3, 4], "FP32")
        gx.set_data_from_numpy(rows)
        over_grpc = grpc_client.infer("iris-pipeline", [gx])
        metadata = grpc_client.get_model_metadata("iris-pipeline", as_json=True)
    for result in (over_http, over_grpc):
        assert [label.decode() for label in result.as_numpy("label")] == ["setosa", "virginica", "setosa"]
        assert result.as_numpy("confidence").dtype == np.float32
    # a pipeline takes what its first step takes and gives what its last step gives
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("x", "FP32", ["-1", "4"])
    ]
    assert [t["name"] for t in metadata["outputs"]] == ["label", "confidence"]


def test_modelpod_client_over_grpc_native_and_v2(server: ServerProcess) -> None:
    with Client(server.grpc_address, model="iris-pipeline") as pipeline:
        assert list(pipeline.predict(x=np.array([VIRGINICA], dtype=np.float32))["label"]) == ["virginica"]
        outputs = pipeline.infer({"x": np.array([SETOSA], dtype=np.float32)})
        assert [label.decode() for label in outputs["label"]] == ["setosa"]
        assert pipeline.model("chain").predict(text="hi") == "HI: FRACTION 2/3!"


def test_each_step_is_counted_as_its_own_model_and_batched_by_its_own_batcher(
    http: httpx.Client,
) -> None:
    def rows_batched(model: str) -> int:
        sizes = http.get(f"/models/{model}").json()["versions"][0]["batch_sizes"]
        return sum(int(size) * count for size, count in sizes.items())

    before, rows_before = metric_samples(http), rows_batched("iris-scale")
    stats_before = {m: successes(http, m) for m in ("iris-scale", "iris-linear", "iris-tree", "iris-label")}
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: http.post("/models/iris-pipeline/predict", json={"x": [SETOSA]}), range(16))
        )
    assert [a.status_code for a in answers] == [200] * 16
    after = metric_samples(http)
    assert requests_of(after, "iris-pipeline", "http") - requests_of(before, "iris-pipeline", "http") == 16
    for step, count in (("iris-scale", 16), ("iris-linear", 16), ("iris-tree", 0), ("iris-label", 16)):
        assert requests_of(after, step, "pipeline") - requests_of(before, step, "pipeline") == count, step
        assert successes(http, step) - stats_before[step] == count, step
    assert rows_batched("iris-scale") - rows_before == 16  # every row went through the step's batcher


# -- what flows between steps ---------------------------------------------------------------------


def test_python_objects_pass_between_steps_unencoded(http: httpx.Client) -> None:
    # a Fraction cannot travel as JSON: it reached the second step as it left the first
    assert http.post("/models/chain/predict", json={"text": "hello"}).json() == "HELLO: FRACTION 5/3!"


def test_a_step_branches_on_the_data(http: httpx.Client) -> None:
    assert http.post("/models/by-length/predict", json={"text": "hi"}).json() == "hi: fraction 2/3..."
    long = http.post("/models/by-length/predict", json={"text": "a rather long text"}).json()
    assert long == "A RATHER LONG TEXT: FRACTION 6!"


def test_a_declared_pipeline_branches_by_query_parameter(http: httpx.Client) -> None:
    assert http.post("/models/declared/predict", json={"text": "Hey"}).json() == "HEY: FRACTION 1!"
    quiet = http.post("/models/declared/predict?branch=whisper", json={"text": "Hey"})
    assert quiet.json() == "hey: fraction 1..."
    unknown = http.post("/models/declared/predict?branch=sing", json={"text": "Hey"})
    assert unknown.status_code == 400
    assert unknown.json()["error"] == (
        "pipeline 'declared' step 2 (choosing a branch): unknown branch 'sing'; choose one of shout, whisper"
    )


def test_a_steps_own_error_answer_ends_the_pipeline(http: httpx.Client) -> None:
    refused = http.post("/models/refusing/predict", json={"text": "no"})
    assert refused.status_code == 422
    assert refused.json() == {"error": "will not take 'no: Fraction 2/3'"}


# -- errors name the step --------------------------------------------------------------------------


def test_an_invalid_request_names_the_step_and_stays_a_400(server: ServerProcess, http: httpx.Client) -> None:
    answer = http.post("/models/chain/predict", json={"words": "hello"})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("pipeline 'chain' step 0 (third): ")
    pipeline = Client(server.grpc_address, model="iris-pipeline")
    with pipeline, pytest.raises(InvalidInput) as caught:
        pipeline.predict(x=np.ones((1, 3), dtype=np.float32))
    assert str(caught.value).startswith("pipeline 'iris-pipeline' step 0 (iris-scale): ")
    assert "expected [-1, 4]" in str(caught.value)


def test_a_failing_step_is_a_500_naming_it_with_its_id(server: ServerProcess, http: httpx.Client) -> None:
    before = metric_samples(http)
    answer = http.post("/models/failing/predict", json={"text": "x"})
    assert answer.status_code == 500
    error_id = answer.headers["x-error-id"]
    assert answer.json()["error"] == f"{FAILED_STEP} (error id {error_id})"
    server.wait_for_line(f"error id {error_id}")  # the traceback is in the log, under the same id
    with Client(server.grpc_address, model="failing") as failing, pytest.raises(ModelError) as caught:
        failing.predict(text="x")
    assert str(caught.value) == f"{FAILED_STEP} (error id {caught.value.error_id})"
    after = metric_samples(http)
    failed = "model_error"
    assert (
        requests_of(after, "fails", "pipeline", failed) - requests_of(before, "fails", "pipeline", failed)
        == 2
    )
    assert requests_of(after, "failing", "http", failed) - requests_of(before, "failing", "http", failed) == 1


def test_a_choose_that_names_no_branch_is_the_pipelines_error(http: httpx.Client) -> None:
    answer = http.post("/models/bad-choice/predict", json={"text": "x"})
    assert answer.status_code == 500
    assert answer.json()["error"].startswith(
        "pipeline 'bad-choice' step 1 (choosing a branch): choose returned 'b', not one of its branches a"
    )


def test_the_deadline_covers_the_whole_pipeline(server: ServerProcess) -> None:
    with Client(server.http_url, model="sleepy", timeout=0.3) as sleepy:
        with pytest.raises(Timeout, match=r"the request's timeout of 0\.[23]|did not answer within 0\.3 s"):
            sleepy.predict(seconds=2)
        assert sleepy.with_timeout(10).predict(seconds=0) == "SLEPT 0!"


# -- start-up --------------------------------------------------------------------------------------


def test_a_step_that_is_not_served_stops_the_server_at_start_up(tmp_path: Path) -> None:
    ports = ("--http-port", "0", "--grpc-port", "0", "--data-path", str(tmp_path))
    command = [sys.executable, "-m", "modelpod", "serve", f"{STEPS}:Third", *ports, "--pipeline"]
    finished = subprocess.run([*command, "broken=third,nowhere"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    assert finished.returncode == 2
    assert (
        "modelpod: pipeline 'broken' step 1 names model 'nowhere', which is not served here (models: third)"
        in finished.stderr
    )
    bad = subprocess.run([*command, "x=third,,y"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)  # fmt: skip
    assert bad.returncode == 2
    assert "--pipeline 'x=third,,y': invalid model name ''" in bad.stderr


def test_a_pipeline_is_ready_when_every_model_of_its_steps_is(start_server: StartServer) -> None:
    server = start_server(
        f"{STEPS}:Third", servable("FailsToLoad"),
        args=("--pipeline", "whole=third", "--pipeline", "half=third,failstoload"),
    )  # fmt: skip
    ready = {name: httpx.get(f"{server.http_url}/v2/models/{name}/ready") for name in ("whole", "half")}
    assert (ready["whole"].status_code, ready["half"].status_code) == (200, 503)
    with grpcclient.InferenceServerClient(server.grpc_address) as triton:
        assert triton.is_model_ready("whole")
        assert not triton.is_model_ready("half")
