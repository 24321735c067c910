"""The exception tree and its one status table, read both ways."""

from __future__ import annotations

import re

import pytest

from modelpod import errors
from modelpod.errors import (
    BodyTimeout,
    Conflict,
    Forbidden,
    Interrupted,
    InvalidInput,
    ModelError,
    ModelLoadError,
    ModelpodError,
    NotFound,
    PayloadTooLarge,
    ProcessorError,
    RateLimited,
    Timeout,
    Unauthenticated,
    Unavailable,
)

# Every class with the one HTTP status and the one gRPC status it must map to.
EXPECTED = [
    (InvalidInput, 400, "INVALID_ARGUMENT"),
    (Unauthenticated, 401, "UNAUTHENTICATED"),
    (Forbidden, 403, "PERMISSION_DENIED"),
    (NotFound, 404, "NOT_FOUND"),
    (Conflict, 409, "FAILED_PRECONDITION"),
    (PayloadTooLarge, 413, "RESOURCE_EXHAUSTED"),
    (ModelError, 500, "INTERNAL"),
    (ProcessorError, 500, "INTERNAL"),
    (ModelLoadError, 503, "UNAVAILABLE"),
    (Unavailable, 503, "UNAVAILABLE"),
    (Interrupted, 503, "UNAVAILABLE"),
    (RateLimited, 429, "RESOURCE_EXHAUSTED"),
    (Timeout, 504, "DEADLINE_EXCEEDED"),
    (BodyTimeout, 408, "DEADLINE_EXCEEDED"),
]


def make(cls: type[ModelpodError], message: str = "boom") -> ModelpodError:
    return cls("proc", message) if cls is ProcessorError else cls(message)


def all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(all_subclasses(sub) for sub in found)) if found else found


def test_every_error_class_is_in_the_table() -> None:
    # Subclasses made elsewhere (a transport's own refinements) take their base's row.
    declared = {cls for cls in all_subclasses(ModelpodError) if getattr(errors, cls.__name__, None) is cls}
    assert declared == {cls for cls, _, _ in EXPECTED}


@pytest.mark.parametrize(("cls", "http", "grpc"), EXPECTED)
def test_each_class_maps_to_one_http_and_one_grpc_status(
    cls: type[ModelpodError], http: int, grpc: str
) -> None:
    error = make(cls)
    assert errors.http_status(error) == http
    assert errors.grpc_status_name(error) == grpc


@pytest.mark.parametrize("error", [ValueError("x"), KeyError("k"), ModelpodError("base"), RuntimeError()])
def test_anything_unexpected_is_internal(error: BaseException) -> None:
    assert errors.http_status(error) == 500
    assert errors.grpc_status_name(error) == "INTERNAL"


@pytest.mark.parametrize(
    ("http", "grpc", "cls"),
    [
        (400, "INVALID_ARGUMENT", InvalidInput),
        (401, "UNAUTHENTICATED", Unauthenticated),
        (403, "PERMISSION_DENIED", Forbidden),
        (404, "NOT_FOUND", NotFound),
        (409, "FAILED_PRECONDITION", Conflict),
        (413, "RESOURCE_EXHAUSTED", PayloadTooLarge),
        (500, "INTERNAL", ModelError),
        (503, "UNAVAILABLE", Unavailable),  # the first of the two 503s in the table
        (504, "DEADLINE_EXCEEDED", Timeout),
    ],
)
def test_clients_rebuild_the_error_from_a_status(http: int, grpc: str, cls: type[ModelpodError]) -> None:
    for rebuilt in (
        errors.from_http_status(http, "said the server"),
        errors.from_grpc_status_name(grpc, "m"),
    ):
        assert type(rebuilt) is cls
    rebuilt = errors.from_http_status(http, "said the server")
    assert rebuilt.message == "said the server"
    # and back again: the rebuilt error maps to the status it came from
    assert errors.http_status(rebuilt) == http
    assert errors.grpc_status_name(errors.from_grpc_status_name(grpc, "m")) == grpc


@pytest.mark.parametrize("status", [402, 418, 502, 200])
def test_unknown_http_status_gives_the_base_error(status: int) -> None:
    error = errors.from_http_status(status, "odd")
    assert type(error) is ModelpodError
    assert str(error) == "odd"


def test_unknown_grpc_status_gives_the_base_error() -> None:
    assert type(errors.from_grpc_status_name("UNKNOWN", "odd")) is ModelpodError
    assert type(errors.from_grpc_status_name("", "odd")) is ModelpodError


@pytest.mark.parametrize(
    "cls",
    [
        InvalidInput,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        BodyTimeout,
        ModelLoadError,
        Unavailable,
        Timeout,
    ],
)
def test_from_error_name_rebuilds_the_exact_class(cls: type[ModelpodError]) -> None:
    error = errors.from_error_name(cls.__name__, "named")
    assert type(error) is cls
    assert error is not None
    assert error.message == "named"


@pytest.mark.parametrize(
    "name", [None, "", "ModelError", "ProcessorError", "ModelpodError", "ValueError", "x"]
)
def test_from_error_name_refuses_names_a_message_cannot_rebuild(name: str | None) -> None:
    assert errors.from_error_name(name, "m") is None


def test_str_and_repr() -> None:
    error = NotFound("model 'x' is not served here")
    assert str(error) == "model 'x' is not served here"
    assert repr(error) == "NotFound(\"model 'x' is not served here\")"
    assert error.args == ("model 'x' is not served here",)


def test_model_error_ids() -> None:
    given = ModelError("it broke", error_id="abc123")
    assert given.error_id == "abc123"
    assert str(given) == "it broke (error id abc123)"
    assert given.message == "it broke"
    first, second = ModelError("a"), ModelError("a")
    assert re.fullmatch(r"[0-9a-f]{12}", first.error_id)
    assert first.error_id != second.error_id
    assert str(first) == f"a (error id {first.error_id})"


def test_processor_error_names_its_processor() -> None:
    error = ProcessorError("normalize", "division by zero", "feedbeef0000")
    assert error.processor == "normalize"
    assert isinstance(error, ModelError)
    assert str(error) == "division by zero (error id feedbeef0000)"


def test_unavailable_retry_after_and_interrupted() -> None:
    assert Unavailable("busy").retry_after is None
    assert Unavailable("busy", retry_after=2.5).retry_after == 2.5
    interrupted = Interrupted("connection reset")
    assert isinstance(interrupted, Unavailable)
    assert interrupted.retry_after is None
    assert not interrupted.from_model
