"""Fuzz every gRPC method of a real server with hypothesis-generated messages and bytes.

Messages are drawn field by field from each request type's descriptor (names drawn mostly from
what the server serves, so that requests reach the models), native `Call` payloads are any
msgpack value, and raw bytes stand for clients that send something else entirely. Every answer
must be a result or a client error (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION), never
INTERNAL or UNKNOWN, and nothing may hang; the server must still serve afterwards and must have
logged no traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import msgpack
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from modelpod.protocol import native
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import native_pb2

from conftest import ROOT, ServerProcess, launch

FAULTS = ROOT / "tests" / "servable_faults.py"
MODELS = ["careful", "affine", "steady"]
CLIENT_ERRORS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
INFERENCE = "/inference.GRPCInferenceService/"
# method -> its request type (not RepositoryModelUnload: an unloaded model answers UNAVAILABLE on purpose)
UNARY: dict[str, type[Message]] = {
    f"{INFERENCE}ServerLive": pb.ServerLiveRequest,
    f"{INFERENCE}ServerReady": pb.ServerReadyRequest,
    f"{INFERENCE}ModelReady": pb.ModelReadyRequest,
    f"{INFERENCE}ServerMetadata": pb.ServerMetadataRequest,
    f"{INFERENCE}ModelMetadata": pb.ModelMetadataRequest,
    f"{INFERENCE}ModelInfer": pb.ModelInferRequest,
    f"{INFERENCE}ModelConfig": pb.ModelConfigRequest,
    f"{INFERENCE}ModelStatistics": pb.ModelStatisticsRequest,
    f"{INFERENCE}RepositoryIndex": pb.RepositoryIndexRequest,
    f"{INFERENCE}RepositoryModelLoad": pb.RepositoryModelLoadRequest,
    "/modelpod.native.ModelService/Call": native_pb2.CallRequest,
}
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip

# Strings a field of this name takes, beside any text: what reaches the models and the decoders.
WORDS = {
    "name": MODELS,
    "model_name": MODELS,
    "model": MODELS,
    "version": ["", "1", "2", "../1", "x" * 200],
    "model_version": ["", "1", "2", "../1"],
    "method": ["predict", "initialize", "log", "train", "training", "fly"],
    "datatype": ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16", "fp32", ""],
}
INPUT_NAMES = ["a", "b", "x", "text", "times", ""]
PARAMETERS = ["priority", "timeout", "binary_data_size", "binary_data_output", "shared_memory_region"]

_INTEGERS = {
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.one_of(st.integers(-4, 8), st.integers(-(2**63), 2**63 - 1)),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.one_of(st.integers(0, 8), st.integers(0, 2**64 - 1)),
}


def scalars(field: FieldDescriptor, context: str) -> st.SearchStrategy[Any]:
    """Values for one scalar field of the descriptor."""
    if field.type == FieldDescriptor.TYPE_STRING:
        words = INPUT_NAMES if field.name == "name" and context != "request" else WORDS.get(field.name, [])
        return st.sampled_from(words) | st.text(max_size=12) if words else st.text(max_size=12)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=48)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([value.number for value in field.enum_type.values])
    return _INTEGERS.get(field.type, st.integers(-(2**31), 2**31 - 1))


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> dict[str, Any]:
    """A message of `descriptor` as keyword arguments, any subset of its fields set."""
    values: dict[str, Any] = {}
    chosen_oneofs: set[str] = set()
    for field in descriptor.fields:
        if field.containing_oneof is not None:
            if field.containing_oneof.name in chosen_oneofs or not draw(st.booleans()):
                continue
            chosen_oneofs.add(field.containing_oneof.name)
        elif not draw(st.booleans()):
            continue
        context = "request" if depth == 0 else descriptor.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            key = st.sampled_from(PARAMETERS) | st.text(max_size=6)
            value = messages(entry.message_type, depth + 1) if entry.message_type else scalars(entry, context)
            values[field.name] = draw(st.dictionaries(key, value, max_size=3))
        elif field.message_type is not None:
            if depth >= 3:
                continue
            one = messages(field.message_type, depth + 1)
            repeated = field.is_repeated
            values[field.name] = draw(st.lists(one, max_size=3)) if repeated else draw(one)
        elif field.is_repeated:
            values[field.name] = draw(st.lists(scalars(field, context), max_size=4))
        else:
            values[field.name] = draw(scalars(field, context))
    return values


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6) | st.integers(0, 3), children, max_size=4),
    max_leaves=12,
)  # fmt: skip
arguments = st.fixed_dictionaries(
    {}, optional={"text": msgpack_values, "times": msgpack_values}
) | st.dictionaries(st.text(max_size=6), msgpack_values, max_size=3)


@st.composite
def call_payloads(draw: st.DrawFn) -> bytes:
    """A native call's payload: keyword arguments, any msgpack value, an array, or any bytes."""
    kind = draw(st.sampled_from(["arguments", "value", "array", "bytes"]))
    if kind == "arguments":
        return native.pack(draw(arguments))
    if kind == "value":
        return bytes(msgpack.packb(draw(msgpack_values)))
    if kind == "array":
        dtype = draw(st.sampled_from(["<f4", "<i8", "|b1", "<U3", "S2", "O", "float", "<c8"]))
        shape = draw(st.lists(st.integers(-1, 4) | st.just(2**40), max_size=3))
        payload = msgpack.ExtType(
            native.NDARRAY, bytes(msgpack.packb([dtype, shape, draw(st.binary(max_size=32))]))
        )
        return bytes(msgpack.packb({"text": payload}))
    return draw(st.binary(max_size=40))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch(
        tuple(f"{FAULTS}:{name.title()}" for name in MODELS), tmp_path_factory.mktemp("fuzz-grpc")
    )
    yield process
    assert process.stop() == 0, process.output
    assert "Traceback" not in process.output, process.output


@pytest.fixture(scope="module")
def channel(fuzzed: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzzed.grpc_address) as channel:
        yield channel


def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def assert_client_error(method: str, sent: Any, outcome: tuple[grpc.StatusCode, str]) -> None:
    code, details = outcome
    event(f"{method.rsplit('/', 1)[-1]} {code.name}")
    assert code in CLIENT_ERRORS, (method, code, details, sent)


@SETTINGS
@given(data=st.data())
def test_any_message_to_any_method_is_answered_or_refused_as_the_clients_error(
    channel: grpc.Channel, data: st.DataObject
) -> None:
    method = data.draw(st.sampled_from(sorted(UNARY)))
    kind = UNARY[method]
    fields = data.draw(messages(kind.DESCRIPTOR))
    if kind is native_pb2.CallRequest:
        fields["payload"] = data.draw(call_payloads())
    message = kind(**fields)
    rpc = channel.unary_unary(method, request_serializer=kind.SerializeToString, response_deserializer=bytes)
    assert_client_error(method, message, status_of(lambda: rpc(message, timeout=30)))


@SETTINGS
@given(method=st.sampled_from(sorted(UNARY)), garbage=st.binary(min_size=1, max_size=64))
def test_bytes_that_are_no_message_are_refused(channel: grpc.Channel, method: str, garbage: bytes) -> None:
    rpc = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
    assert_client_error(method, garbage, status_of(lambda: rpc(garbage, timeout=30)))


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(
    requests=st.lists(
        messages(pb.ModelInferRequest.DESCRIPTOR) | st.binary(max_size=24), min_size=1, max_size=4
    )
)
def test_a_stream_answers_each_message_and_stays_open(channel: grpc.Channel, requests: list[Any]) -> None:
    stream = channel.stream_stream(
        f"{INFERENCE}ModelStreamInfer",
        request_serializer=bytes,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    wire = [r if isinstance(r, bytes) else pb.ModelInferRequest(**r).SerializeToString() for r in requests]
    answers: list[pb.ModelStreamInferResponse] = []
    outcome = status_of(lambda: answers.extend(stream(iter(wire), timeout=30)))
    assert_client_error("ModelStreamInfer", requests, outcome)
    assert len(answers) == len(wire)  # one answer each, errors included: the stream never broke off


def test_the_server_still_serves_correctly_after_the_fuzzing(
    channel: grpc.Channel, fuzzed: ServerProcess
) -> None:
    assert fuzzed.process.poll() is None
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    request = pb.ModelInferRequest(model_name="steady")
    request.inputs.add(name="x", datatype="FP64", shape=[2, 3])
    request.raw_input_contents.append(x.tobytes())
    infer = channel.unary_unary(
        f"{INFERENCE}ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    response = infer(request, timeout=30)
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0]).reshape(2, 3), x * 3 + 1)
