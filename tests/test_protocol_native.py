"""Native msgpack codec: values round-trip, numpy arrays exactly, and bad payloads are refused."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelpod.errors import InvalidInput
from modelpod.protocol.native import NDARRAY, OBJECT_NDARRAY, pack, unpack


def assert_same(actual: Any, expected: np.ndarray) -> None:
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def test_plain_values_round_trip() -> None:
    value = {"a": 1, "b": [1.5, None, True], "c": "text", "d": b"\x00\xff", 3: {"nested": []}}
    assert unpack(pack(value)) == value


def test_tuples_become_lists_and_bytes_stay_bytes() -> None:
    assert unpack(pack((1, (2, b"x")))) == [1, [2, b"x"]]
    assert unpack(pack(bytearray(b"ab"))) == b"ab"


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        (np.float32(1.5), 1.5),
        (np.int8(-3), -3),
        (np.uint64(2**64 - 1), 2**64 - 1),
        (np.bool_(True), True),
    ],
)
def test_numpy_scalars_become_python_scalars(scalar: Any, expected: Any) -> None:
    result = unpack(pack(scalar))
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(6, dtype=">i4").reshape(2, 3),
        np.array(3.5),
        np.zeros((0, 3), dtype=np.int16),
        np.array([True, False]),
        np.array([1 + 2j], dtype=np.complex64),
        np.array(["ab", "c"]),
        np.array([b"ab", b"c"]),
        np.array(["2024-01-01"], dtype="datetime64[ns]"),
        np.asfortranarray(np.arange(6).reshape(2, 3)),
        np.arange(10)[::3],
    ],
    ids=lambda a: str(a.dtype),
)
def test_arrays_round_trip_exactly(array: np.ndarray) -> None:
    result = unpack(pack({"x": array}))["x"]
    assert_same(result, array)
    assert result.flags.writeable


def test_object_arrays_of_text_round_trip() -> None:
    array = np.array([["a", b"\xff"], ["", b""]], dtype=object)
    assert_same(unpack(pack(array)), array)


@settings(max_examples=200, deadline=None)
@given(
    array=hnp.arrays(
        hnp.scalar_dtypes() | hnp.byte_string_dtypes() | hnp.unicode_string_dtypes(),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0),
    )
)
def test_any_array_round_trips(array: np.ndarray) -> None:
    assert_same(unpack(pack(array)), array)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1, 2}, "type set"),
        (np.array([None, "a"], dtype=object), "only str and bytes, not NoneType"),
        (np.zeros(2, dtype="i4,f4"), "structured array"),
        (2**70, "at most 64 bits"),
        (object(), "type object"),
    ],
)
def test_values_without_a_form_raise_type_error(value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        pack(value)


def ext(code: int, payload: Any) -> bytes:
    packed: bytes = msgpack.packb(msgpack.ExtType(code, msgpack.packb(payload, use_bin_type=True)))
    return packed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1", "malformed msgpack"),
        (b"\x92\x01", "malformed msgpack"),
        (b"\x01\x02", "malformed msgpack"),
        (msgpack.packb(msgpack.ExtType(9, b"")), "unknown msgpack extension type 9"),
        (ext(NDARRAY, ["<f4", [2]]), "expected [dtype, shape, data]"),
        (ext(NDARRAY, ["|O", [1], b"\0" * 8]), "unsupported dtype '|O'"),
        (ext(NDARRAY, ["i4,i4", [1], b"\0" * 8]), "unsupported dtype"),
        (ext(NDARRAY, ["nonsense", [1], b"\0"]), "unsupported dtype 'nonsense'"),
        (ext(NDARRAY, [4, [1], b"\0"]), "unsupported dtype 4"),
        (ext(NDARRAY, ["<f4", [-1], b""]), "not a list of sizes"),
        (ext(NDARRAY, ["<f4", [1.0], b"\0" * 4]), "not a list of sizes"),
        (ext(NDARRAY, ["<f4", [2], b"\0" * 4]), "does not fill shape [2]"),
        (ext(NDARRAY, ["<f4", [1], "abcd"]), "does not fill shape"),
        (ext(NDARRAY, ["|S0", [0, 1 << 62], b""]), "malformed"),
        (ext(OBJECT_NDARRAY, [[2], ["a"]]), "items do not fill shape [2]"),
        (ext(OBJECT_NDARRAY, [[1], [1]]), "items do not fill shape"),
        (ext(OBJECT_NDARRAY, [[1]]), "expected [shape, items]"),
        (ext(NDARRAY, ["<f4", [1], ext(NDARRAY, [])]), "does not fill shape"),
    ],
)
def test_malformed_payloads_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        unpack(data)
    assert message in str(caught.value)


def test_unhashable_map_keys_are_refused() -> None:
    data = b"\x81\x91\x01\x02"  # {[1]: 2}
    with pytest.raises(InvalidInput, match="malformed msgpack"):
        unpack(data)


def test_deep_nesting_is_refused_not_crashed() -> None:
    with pytest.raises(InvalidInput):
        unpack(b"\x91" * 100_000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        unpack(data)


def test_body_buffer_collects_chunks_and_grows_only_with_what_arrived() -> None:
    import sys

    from modelpod.protocol.body import BodyBuffer

    body = BodyBuffer()
    for chunk in (b"ab", b"cd", b"ef"):
        body.add(chunk)
    assert body.size == 6
    assert body.finish() == bytearray(b"abcdef")
    one_byte = BodyBuffer()
    one_byte.add(b"{")
    assert sys.getsizeof(one_byte.finish()) < 1024  # no room reserved for what a client only declared
