"""The shared vocabulary: protocol datatypes, tensor specs, model responses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from modelpod.types import DATATYPES, Response, TensorSpec, datatype_of, numpy_dtype, tensor_specs

NUMERIC = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def test_the_datatypes_are_those_of_the_protocol() -> None:
    assert list(DATATYPES) == [*NUMERIC, "BYTES"]


@pytest.mark.parametrize(("datatype", "scalar"), NUMERIC.items())
def test_numeric_datatypes_both_ways(datatype: str, scalar: type) -> None:
    assert numpy_dtype(datatype) == np.dtype(scalar)
    assert datatype_of(np.zeros(2, dtype=scalar)) == datatype
    assert datatype_of(np.zeros((0, 3), dtype=numpy_dtype(datatype))) == datatype


@pytest.mark.parametrize(
    "array",
    [np.array([b"a", b"bc"]), np.array(["text", "\u00e9"]), np.array([b"x", "y", 1], dtype=object)],
    ids=["bytes", "str", "object"],
)
def test_strings_bytes_and_objects_are_bytes(array: np.ndarray) -> None:
    assert datatype_of(array) == "BYTES"
    assert numpy_dtype("BYTES") == np.dtype(object)


@pytest.mark.parametrize("dtype", [np.complex64, np.dtype("datetime64[s]"), np.dtype([("a", "i4")])])
def test_arrays_with_no_protocol_datatype(dtype: np.dtype) -> None:
    with pytest.raises(TypeError, match="has no Open Inference Protocol datatype"):
        datatype_of(np.zeros(1, dtype=dtype))


@pytest.mark.parametrize("name", ["FLOAT32", "fp32", "STRING", ""])
def test_unknown_datatype_name(name: str) -> None:
    with pytest.raises(KeyError):
        numpy_dtype(name)


def test_tensor_spec_defaults_and_dict() -> None:
    spec = TensorSpec("x")
    assert (spec.datatype, spec.shape) == ("FP32", (-1,))
    assert TensorSpec("ids", "INT64", [-1, 3]).as_dict() == {
        "name": "ids",
        "datatype": "INT64",
        "shape": [-1, 3],
    }


def test_tensor_spec_shape_is_a_tuple_of_ints() -> None:
    spec = TensorSpec("x", "FP32", [np.int64(2), 3.0, "4"])  # type: ignore[list-item]
    assert spec.shape == (2, 3, 4)
    assert all(type(d) is int for d in spec.shape)
    assert spec == TensorSpec("x", "FP32", (2, 3, 4))
    assert hash(spec) == hash(TensorSpec("x", "FP32", (2, 3, 4)))


def test_tensor_spec_validation() -> None:
    with pytest.raises(
        ValueError, match=r"unknown datatype 'FLOAT' for 'x'; use one of BOOL, UINT8, .*BYTES"
    ):
        TensorSpec("x", "FLOAT")
    with pytest.raises(ValueError, match="invalid literal"):
        TensorSpec("x", "FP32", ("n",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        TensorSpec("x").name = "y"  # type: ignore[misc]


def test_tensor_specs_from_specs_and_dicts() -> None:
    given = TensorSpec("a", "BYTES")
    specs = tensor_specs([given, {"name": "b", "datatype": "INT8", "shape": [2]}, {"name": "c"}])
    assert specs == (given, TensorSpec("b", "INT8", (2,)), TensorSpec("c", "FP32", (-1,)))
    assert specs[0] is given
    assert tensor_specs(()) == ()
    with pytest.raises(ValueError, match="unknown datatype 'X' for 'd'"):
        tensor_specs([{"name": "d", "datatype": "X"}])
    with pytest.raises(TypeError, match="dims"):
        tensor_specs([{"name": "e", "dims": [1]}])


def test_response_defaults() -> None:
    response = Response({"ok": True})
    assert (response.status, response.headers, response.media_type) == (200, {}, None)
    assert Response().headers is not Response().headers
