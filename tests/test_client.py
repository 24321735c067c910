"""`modelpod.client` against a real `modelpod serve` process, over HTTP and over gRPC.

Every test that talks to the server runs once per transport (`http://…` and `host:port`);
the asyncio client runs the same paths in `test_async_*`. One server serves the module;
tests that need a single-model server share a second one.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelpod.client import AsyncClient, Client, ModelInfo
from modelpod.client._errors import Interrupted
from modelpod.client._operations import Retry
from modelpod.client._retry import Backoff
from modelpod.errors import InvalidInput, ModelError, NotFound, Timeout, Unavailable

from conftest import ROOT, ServerProcess, launch, servable

TENSORS = ROOT / "tests" / "servable_tensors.py"
ERROR_ID = re.compile(r"error id ([0-9a-f]{12})")
TRANSPORTS = ["http", "grpc"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = (
        servable("Echo"),
        servable("Doubler"),
        servable("Broken"),
        servable("Bytes"),
        servable("Slow"),
        servable("Custom"),
        servable("Busy"),
        f"{TENSORS}:Mirror",
        f"{TENSORS}:Identity",
    )
    process = launch(models, tmp_path_factory.mktemp("client-appdata"))
    yield process
    process.stop(timeout=15)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with exactly one model, which a client may use without naming it."""
    process = launch((servable("Echo"),), tmp_path_factory.mktemp("single-appdata"))
    yield process
    process.stop(timeout=15)


def address_of(server: ServerProcess, transport: str) -> str:
    return server.http_url if transport == "http" else server.grpc_address


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def address(server: ServerProcess, transport: str) -> str:
    return address_of(server, transport)


@pytest.fixture
def client(address: str) -> Iterator[Client]:
    with Client(address) as client:
        yield client


def assert_same_array(received: Any, sent: np.ndarray) -> None:
    """Exactly the array that was sent: type, dtype, shape and every bit."""
    assert isinstance(received, np.ndarray)
    assert (received.dtype, received.shape) == (sent.dtype, sent.shape)
    if sent.dtype.kind == "O":
        assert received.tolist() == sent.tolist()
    else:
        assert received.tobytes() == sent.tobytes()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def later(seconds: float, action: Callable[[], object]) -> threading.Thread:
    """Run `action` on another thread after `seconds`; join the thread to wait for it."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def repository(server: ServerProcess, action: str, model: str) -> None:
    httpx.post(f"{server.http_url}/v2/repository/models/{model}/{action}", timeout=30).raise_for_status()


# -- the model's own methods ---------------------------------------------------------------------------


def test_initialize_train_log_and_predict_a_new_version(client: Client, transport: str) -> None:
    echo = client.model("echo", version=f"new-{transport}")
    info = echo.initialize(greeting="hello")
    assert (info["version"], info["config"]) == (f"new-{transport}", {"greeting": "hello"})
    assert echo.train(steps=4) == {"steps": 4}
    log = echo.log()
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert log[-1]["metrics"] == {"loss": 0.25}
    answer = echo.predict(text="hi", repeat=2)
    assert answer == {"text": "hihi", "version": f"new-{transport}", "config": {"greeting": "hello"}}
    assert client.model("echo").predict(text="x")["version"] == "1"  # the default is untouched
    assert f"new-{transport}" in dict((m.name, m.versions) for m in client.models())["echo"]


def test_arrays_bytes_and_plain_values_round_trip_exactly(client: Client) -> None:
    arrays: dict[str, np.ndarray] = {
        "f16": np.array([[1.5, -0.0], [np.inf, np.nan]], dtype=np.float16),
        "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "f64_big_endian": np.array([1.25, -2.5], dtype=">f8"),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "u64": np.array([2**64 - 1, 0], dtype=np.uint64),
        "flags": np.array([True, False]),
        "empty": np.zeros((0, 3), dtype=np.int32),
        "scalar": np.array(7, dtype=np.int16),
        "complex": np.array([1 + 2j, -1j], dtype=np.complex64),
        "blobs": np.array([b"\x00\xff", b""], dtype=object),
    }
    plain: dict[str, Any] = {"text": "héllo", "nested": [1, 2.5, {"k": b"\x01"}], "big": 2**63 - 1}
    result = client.model("mirror").predict(**arrays, **plain, binary_data=b"\x00\xff")
    for name, sent in arrays.items():
        assert_same_array(result[name], sent)
    assert {name: result[name] for name in plain} == plain
    assert result["binary_data"] == b"\x00\xff"


def test_binary_data_in_and_bytes_out(client: Client) -> None:
    data = bytes(range(256)) * 100
    assert client.model("bytes").predict(binary_data=data) == data[::-1]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    array=hnp.arrays(
        dtype=st.one_of(
            hnp.boolean_dtypes(),
            hnp.integer_dtypes(),
            hnp.unsigned_integer_dtypes(),
            hnp.floating_dtypes(),
            hnp.complex_number_dtypes(),
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    )
)
def test_any_numeric_array_round_trips_exactly(client: Client, array: np.ndarray) -> None:
    assert_same_array(client.model("mirror").predict(a=array)["a"], array)


def test_a_models_own_response_is_its_body_or_its_typed_error(client: Client) -> None:
    custom = client.model("custom")
    assert custom.predict(n=3) == {"n": 3}
    with pytest.raises(InvalidInput, match=r"^n must not be negative$"):
        custom.predict(n=-1)


# -- Open Inference Protocol and the server ------------------------------------------------------------


def test_infer_with_tensors(client: Client) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    outputs = client.model("doubler").infer({"x": x})
    assert list(outputs) == ["y"]
    assert_same_array(outputs["y"], x * 2)
    assert list(client.model("doubler").infer({"x": x}, outputs=["y"], request_id="r1")) == ["y"]
    with pytest.raises(InvalidInput, match="unknown output 'z'"):
        client.model("doubler").infer({"x": x}, outputs=["z"])


def test_infer_every_datatype_exactly(client: Client) -> None:
    tensors = {
        "BOOL": np.array([[True], [False]]),
        "UINT8": np.array([[0, 255]], dtype=np.uint8),
        "UINT64": np.array([[2**64 - 1]], dtype=np.uint64),
        "INT16": np.array([[-(2**15)], [2**15 - 1]], dtype=np.int16),
        "INT64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
        "FP16": np.array([[0.5, np.nan]], dtype=np.float16),
        "FP32": np.array([[np.inf, -0.0, 1e-38]], dtype=np.float32),
        "FP64": np.array([[np.pi]], dtype=np.float64),
        "BYTES": np.array([[b"\x00\xff", b"text"]], dtype=object),
    }
    outputs = client.model("identity").infer(tensors)
    assert sorted(outputs) == sorted(tensors)
    for name, sent in tensors.items():
        assert_same_array(outputs[name], sent)


def test_metadata_ready_live_and_models(client: Client) -> None:
    doubler = client.model("doubler")
    metadata = doubler.metadata()
    assert metadata["name"] == "doubler"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}]
    assert doubler.ready() is True
    assert client.ready() is True
    assert client.live() is True
    listing = {model.name: model for model in client.models()}
    assert {"echo", "doubler", "broken", "bytes", "slow", "custom", "mirror", "identity"} <= set(listing)
    assert listing["doubler"] == ModelInfo("doubler", ("1",), available=True)


def test_the_only_model_needs_no_name(single: ServerProcess, transport: str) -> None:
    with Client(address_of(single, transport)) as client:
        assert client.predict(text="x")["text"] == "x"
        assert client._family.model == "echo"  # discovered once, then cached for the family
        assert client.version("1").metadata()["name"] == "echo"


def test_several_models_need_a_name(client: Client) -> None:
    with pytest.raises(InvalidInput, match=r"serves \d+ models \(.*echo.*\); pass model="):
        client.predict(text="x")


# -- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "version", "method", "arguments", "error", "message"),
    [
        ("nope", None, "predict", {}, NotFound, "model 'nope' is not served here"),
        ("echo", "9", "predict", {"text": "x"}, NotFound, "has no version '9'"),
        ("echo", None, "predict", {}, InvalidInput, "missing a required argument: 'text'"),
        ("echo", None, "predict", {"text": "a", "colour": 1}, InvalidInput, "unexpected keyword argument"),
        ("echo", None, "predict", {"text": 5}, InvalidInput, "text must be a string"),
        ("doubler", None, "train", {}, InvalidInput, "has no train() method"),
        ("echo", "bad$name", "initialize", {}, InvalidInput, "invalid version"),
    ],
)
def test_server_errors_are_typed_with_the_servers_message(
    client: Client,
    model: str,
    version: str | None,
    method: str,
    arguments: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    bound = client.model(model, version)
    with pytest.raises(error, match=re.escape(message)):
        getattr(bound, method)(**arguments)
    with pytest.raises(NotFound, match="model 'nope' is not served here"):
        client.model("nope").metadata()


def test_a_model_error_carries_the_servers_error_id_and_is_not_retried(
    client: Client, server: ServerProcess
) -> None:
    logged_before = len(ERROR_ID.findall(server.output))
    with pytest.raises(ModelError) as caught:
        client.model("broken").predict(x=1)
    error = caught.value
    assert ERROR_ID.fullmatch(f"error id {error.error_id}")
    assert str(error) == f"model broken:1 raised RuntimeError (error id {error.error_id})"
    assert "do-not-leak" not in str(error)
    server.wait_for_line(f"error id {error.error_id}")
    assert len(ERROR_ID.findall(server.output)) == logged_before + 1  # one attempt, not four


def test_a_call_past_the_timeout_raises_timeout(address: str) -> None:
    with Client(address, model="slow", timeout=0.3) as slow:
        started = time.monotonic()
        # the client's own clock, or the server's, which enforces the deadline it was sent
        with pytest.raises(Timeout, match=r"did not answer within 0\.3 s|the request's timeout of 0\.[23]"):
            slow.predict(seconds=2)
        assert time.monotonic() - started < 1.5
        assert slow.with_timeout(5).predict(seconds=0)["slept"] == 0  # the connection still serves
        assert slow.with_timeout(5).timeout == 5
        with pytest.raises(Timeout):
            slow.with_timeout(0.2).predict(seconds=1)


def test_an_unreachable_server_is_unavailable_with_its_address(transport: str) -> None:
    address = f"127.0.0.1:{free_port()}"
    address = f"http://{address}" if transport == "http" else address
    with Client(address, model="echo", retries=1) as client:
        for call in (client.live, client.models, lambda: client.predict(text="x")):
            with pytest.raises(
                Unavailable, match=re.escape(f"cannot reach the modelpod server at {address}")
            ):
                call()


# -- retries ------------------------------------------------------------------------------------------------


def test_predict_is_retried_while_the_model_is_unavailable(address: str, server: ServerProcess) -> None:
    repository(server, "unload", "echo")
    with Client(address, model="echo", retries=5) as echo:
        assert echo.ready() is False
        assert not {model.name: model for model in echo.models()}["echo"].available
        loader = later(0.3, lambda: repository(server, "load", "echo"))
        started = time.monotonic()
        try:
            assert echo.predict(text="again")["text"] == "again"
        finally:
            loader.join()
        assert time.monotonic() - started >= 0.3  # it did wait for the load
        assert echo.ready() is True


def test_train_and_initialize_are_never_retried(address: str, server: ServerProcess) -> None:
    repository(server, "unload", "echo")
    with Client(address, model="echo", retries=5) as echo:
        loader = later(0.3, lambda: repository(server, "load", "echo"))
        try:
            with pytest.raises(Unavailable, match="is unloaded"):
                echo.train(steps=1)  # a retry would have succeeded once the model was loaded
        finally:
            loader.join()
        assert echo.train(steps=1) == {"steps": 1}


def test_a_broken_connection_is_retried_only_for_reads() -> None:
    """A server that reads each request and hangs up: predict may have run, so it is not sent again."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    accepted: list[int] = []
    stop = threading.Event()

    def hang_up() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            with connection:
                connection.recv(65536)

    thread = threading.Thread(target=hang_up)
    thread.start()
    address = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with Client(address, model="echo", retries=2) as client:
            with pytest.raises(Unavailable, match="broke during the request"):
                client.predict(text="x")
            assert len(accepted) == 1
            with pytest.raises(Unavailable, match="broke during the request"):
                client.log()
            assert len(accepted) == 1 + 3
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_backoff_doubles_with_jitter_up_to_two_seconds() -> None:
    backoff = Backoff(retries=8)
    busy = Unavailable("busy")
    for attempt, step in enumerate([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]):
        waits = {backoff.delay(Retry.ALWAYS, attempt, busy) for _ in range(20)}
        assert all(w is not None and step / 2 <= w <= step for w in waits), (attempt, waits)
        assert len(waits) > 1  # jittered
    assert backoff.delay(Retry.ALWAYS, 8, busy) is None  # out of retries


def test_backoff_retries_only_what_is_safe_and_honours_retry_after() -> None:
    backoff = Backoff(retries=3)
    assert backoff.delay(Retry.ALWAYS, 0, Unavailable("busy", retry_after=1.0)) == 1.0
    assert backoff.delay(Retry.IF_REFUSED, 0, Unavailable("busy", retry_after=60)) is None  # too long
    assert backoff.delay(Retry.NEVER, 0, Unavailable("busy")) is None
    assert backoff.delay(Retry.IF_REFUSED, 0, Interrupted("the connection broke")) is None
    assert backoff.delay(Retry.ALWAYS, 0, Interrupted("the connection broke")) is not None
    for error in (ModelError("bug"), InvalidInput("bad"), Timeout("slow"), NotFound("gone")):
        assert backoff.delay(Retry.ALWAYS, 0, error) is None
    with pytest.raises(ValueError, match="retries"):
        Client("127.0.0.1:1", retries=-1)


# -- the connection -------------------------------------------------------------------------------------


def test_derived_clients_share_the_connection(address: str) -> None:
    parent = Client(address, model="echo")
    child = parent.version("1").with_timeout(10)
    other = parent.model("mirror")
    assert child._family.transport is parent._family.transport is other._family.transport
    assert repr(child) == f"Client({address!r}, model='echo', version='1')"
    assert child.predict(text="a")["version"] == "1"
    assert other.predict(x=1) == {"x": 1}
    child.close()  # a no-op: the parent owns the connection
    assert parent.predict(text="b")["text"] == "b"
    parent.close()
    with pytest.raises(RuntimeError, match="is closed"):
        child.predict(text="c")


def test_addresses() -> None:
    assert Client("grpc://127.0.0.1:1").address == "127.0.0.1:1"
    assert Client("http://127.0.0.1:1/").address == "http://127.0.0.1:1"
    with pytest.raises(ValueError, match="unsupported address"):
        Client("ftp://127.0.0.1:1")
    with pytest.raises(ValueError, match="timeout"):
        Client("127.0.0.1:1", timeout=0)


# -- the asyncio client -------------------------------------------------------------------------------------


def test_async_client_does_what_the_client_does(address: str, server: ServerProcess, transport: str) -> None:
    async def main() -> None:
        async with AsyncClient(address, model="echo") as echo:
            assert (await echo.predict(text="hi"))["text"] == "hi"
            fresh = echo.version(f"async-{transport}")
            assert (await fresh.initialize(n=1))["config"] == {"n": 1}
            assert await fresh.train(steps=2) == {"steps": 2}
            assert [entry["step"] for entry in await fresh.log()] == [1, 2]
            assert await echo.live() is True
            assert await echo.ready() is True
            assert (await echo.metadata())["name"] == "echo"
            assert "echo" in [model.name for model in await echo.models()]
            x = np.arange(4, dtype=np.float64).reshape(2, 2)
            assert_same_array(
                (await echo.model("doubler").infer({"x": x.astype(np.float32)}))["y"],
                2 * x.astype(np.float32),
            )
            assert_same_array((await echo.model("mirror").predict(a=x))["a"], x)
            assert await echo.model("bytes").predict(binary_data=b"ab") == b"ba"
            with pytest.raises(NotFound, match="model 'nope' is not served here"):
                await echo.model("nope").predict()
            with pytest.raises(ModelError) as caught:
                await echo.model("broken").predict()
            server.wait_for_line(f"error id {caught.value.error_id}")
            started = time.monotonic()
            with pytest.raises(Timeout):
                await echo.model("slow").with_timeout(0.3).predict(seconds=2)
            assert time.monotonic() - started < 1.5
            assert echo.model("slow")._family.transport is echo._family.transport
            await gather_predictions(echo)
        with pytest.raises(RuntimeError, match="is closed"):
            await echo.predict(text="closed")

    asyncio.run(main())


async def gather_predictions(echo: AsyncClient) -> None:
    """Many concurrent calls over the one shared connection."""
    answers = await asyncio.gather(*(echo.predict(text=str(i)) for i in range(20)))
    assert [answer["text"] for answer in answers] == [str(i) for i in range(20)]


def test_async_client_retries_and_unreachable_server(
    address: str, server: ServerProcess, transport: str
) -> None:
    async def main() -> None:
        repository(server, "unload", "echo")
        async with AsyncClient(address, model="echo", retries=5) as echo:
            loader = later(0.3, lambda: repository(server, "load", "echo"))
            try:
                assert (await echo.predict(text="again"))["text"] == "again"
            finally:
                loader.join()
        nowhere = f"127.0.0.1:{free_port()}"
        nowhere = f"http://{nowhere}" if transport == "http" else nowhere
        async with AsyncClient(nowhere, retries=0) as unreachable:
            with pytest.raises(Unavailable, match=re.escape(nowhere)):
                await unreachable.models()

    asyncio.run(main())


def test_a_models_own_503_is_not_resent(server: ServerProcess, address: str) -> None:
    counter = server.data_path / "busy.count"
    counter.unlink(missing_ok=True)
    with (
        Client(address, model="busy") as client,
        pytest.raises(Unavailable, match="the model itself says: busy"),
    ):
        client.predict()
    assert counter.read_text() == "1"
