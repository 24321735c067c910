"""Input preparation on its own: None, sequences, conversion, batch dimension, shapes, bytes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpod import InvalidInput, Model, TensorSpec
from modelpod.runtime.inputs import DeclaredTensors, InputPreparer
from modelpod.serving.tensors import check_declared


class Pair(Model):
    """Two tensor inputs: a (batch, 3) image row and a (batch,) scale."""

    inputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [
        TensorSpec("row", "FP32", (-1, 3)),
        TensorSpec("scale", "FP64", (-1,)),
    ]

    def predict(self, row: Any, scale: Any = None) -> Any:
        return row


def plain(text: str, values: list[float], binary_data: bytes = b"") -> None:
    return None


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(data_path=tmp_path)


def test_none_is_rejected(pair: Pair) -> None:
    preparer = InputPreparer(pair)
    with pytest.raises(InvalidInput, match="item 4: the request has no inputs"):
        preparer.prepare(None, "item 4: ")
    with pytest.raises(InvalidInput, match="input 'scale' is None"):
        preparer.prepare({"row": [[1, 2, 3]], "scale": None})


def test_values_are_converted_to_the_declared_dtype(pair: Pair) -> None:
    prepared = InputPreparer(pair).prepare({"row": ((1, 2, 3),), "scale": [2]})
    assert prepared.values["row"].dtype == np.float32
    assert prepared.values["scale"].dtype == np.float64
    assert not prepared.squeeze
    with pytest.raises(InvalidInput, match="input 'row' is not a FP32 array"):
        InputPreparer(pair).prepare({"row": [["a", "b", "c"]]})


def test_batch_dimension_is_added_and_taken_off_again(pair: Pair) -> None:
    preparer = InputPreparer(pair, add_batch_dim=True)
    prepared = preparer.prepare({"row": [1, 2, 3]})
    assert prepared.values["row"].shape == (1, 3)
    assert prepared.squeeze
    output = np.array([[7.0, 8.0]])
    np.testing.assert_array_equal(prepared.restore(output), [7.0, 8.0])
    restored = prepared.restore({"a": np.zeros((1, 2)), "b": (np.ones((1, 4)), np.ones((1,)))})
    assert restored["a"].shape == (2,)
    assert [v.shape for v in restored["b"]] == [(4,), ()]
    assert prepared.restore("text") == "text"

    both = preparer.prepare({"row": [1, 2, 3], "scale": 2.0})  # every tensor input unbatched
    assert both.values["scale"].shape == (1,)
    assert both.squeeze
    mixed = preparer.prepare({"row": [1, 2, 3], "scale": [2.0, 3.0]})  # one already batched
    assert not mixed.squeeze
    batched = preparer.prepare({"row": [[1, 2, 3]]})
    assert not batched.squeeze
    np.testing.assert_array_equal(batched.restore(np.zeros((1, 2))), np.zeros((1, 2)))


def test_without_add_batch_dim_an_unbatched_input_is_a_shape_error(pair: Pair) -> None:
    with pytest.raises(InvalidInput, match=r"input 'row' has shape \[3\], expected \[-1, 3\]"):
        InputPreparer(pair).prepare({"row": [1, 2, 3]})


@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=3))
def test_shapes_fit_the_spec_exactly_when_rank_and_fixed_sizes_match(shape: list[int]) -> None:
    model = Pair(data_path="/nonexistent-never-written")
    preparer = InputPreparer(model)
    value = np.zeros(shape, dtype=np.float32)
    fits = len(shape) == 2 and shape[1] == 3
    if fits:
        assert preparer.prepare({"row": value}).values["row"].shape == tuple(shape)
    else:
        with pytest.raises(InvalidInput, match="input 'row' has shape"):
            preparer.prepare({"row": value})


def test_untyped_inputs_pass_through_and_tuples_become_lists(tmp_path: Path) -> None:
    from modelpod.runtime.adapters import as_model

    preparer = InputPreparer(as_model(plain, data_path=tmp_path))
    values = preparer.prepare({"text": "hi", "values": (1.0, 2.0)}).values
    assert values == {"text": "hi", "values": [1.0, 2.0]}
    numpy = InputPreparer(as_model(plain, data_path=tmp_path), convert="numpy")
    converted = numpy.prepare({"text": "hi", "values": (1.0, 2.0)}).values
    assert converted["text"] == "hi"  # not a list: left alone
    assert isinstance(converted["values"], np.ndarray)


def test_binary_data_must_be_bytes(tmp_path: Path) -> None:
    from modelpod.runtime.adapters import as_model

    preparer = InputPreparer(as_model(plain, data_path=tmp_path))
    for raw in (b"x", bytearray(b"x"), memoryview(b"x")):
        assert preparer.prepare({"binary_data": raw}).values["binary_data"] is raw
    for wrong in ("x", [1, 2], 3):
        with pytest.raises(InvalidInput, match="'binary_data' is reserved for raw bytes"):
            preparer.prepare({"binary_data": wrong})


def test_torch_tensors_are_converted_either_way(pair: Pair) -> None:
    torch = pytest.importorskip("torch")
    to_numpy = InputPreparer(pair, convert="numpy")
    value = to_numpy.prepare({"row": torch.ones(2, 3)}).values["row"]
    assert isinstance(value, np.ndarray)
    assert value.shape == (2, 3)
    to_torch = InputPreparer(pair, convert="torch")
    as_tensor = to_torch.prepare({"row": [[1, 2, 3]], "scale": torch.tensor([2.0])}).values
    assert isinstance(as_tensor["row"], torch.Tensor)
    assert as_tensor["row"].dtype == torch.float32  # the declared FP32, not numpy's default
    assert str(as_tensor["scale"].device) == "cpu"


def test_merge_positional(pair: Pair) -> None:
    preparer = InputPreparer(pair)
    assert preparer.merge_positional((1,), {"scale": 2}) == {"row": 1, "scale": 2}
    assert preparer.merge_positional((), {"row": 1}) == {"row": 1}
    with pytest.raises(InvalidInput, match="one positional argument at most"):
        preparer.merge_positional((1, 2), {})
    with pytest.raises(InvalidInput, match="'row' given both positionally and by name"):
        preparer.merge_positional((1,), {"row": 2})


def test_options_are_checked(pair: Pair, tmp_path: Path) -> None:
    from modelpod.runtime.adapters import as_model

    with pytest.raises(ValueError, match="convert must be one of"):
        InputPreparer(pair, convert="tensorflow")
    with pytest.raises(ValueError, match="add_batch_dim needs a tensor model"):
        InputPreparer(as_model(plain, data_path=tmp_path), add_batch_dim=True)


def test_a_servers_declared_tensors_are_checked_once_each_property(pair: Pair) -> None:
    """Names and datatypes at the edge (`check_declared`, strict); the shapes in the preparer, which
    hands the same arrays on without converting them a second time."""
    row = np.ones((2, 3), dtype=np.float32)
    scale = np.ones(2, dtype=np.float64)
    declared = check_declared({"row": row, "scale": scale}, pair.input_specs())
    assert isinstance(declared, DeclaredTensors)
    prepared = InputPreparer(pair).prepare(declared)
    assert prepared.values["row"] is row
    assert prepared.values["scale"] is scale
    with pytest.raises(InvalidInput, match="input 'scale' is FP32, but the model declares FP64"):
        check_declared({"row": row, "scale": scale.astype(np.float32)}, pair.input_specs())
    with pytest.raises(InvalidInput, match="unknown input 'other'"):
        check_declared({"row": row, "other": scale}, pair.input_specs())
    wrong_shape = check_declared({"row": np.ones((2, 4), dtype=np.float32)}, pair.input_specs())
    with pytest.raises(InvalidInput, match=r"input 'row' has shape \[2, 4\], expected \[-1, 3\]"):
        InputPreparer(pair).prepare(wrong_shape)


def test_in_process_callers_still_have_their_values_converted(pair: Pair) -> None:
    as_float64 = {"row": np.ones((1, 3), dtype=np.float64), "scale": [1]}
    prepared = InputPreparer(pair).prepare(as_float64)
    assert prepared.values["row"].dtype == np.float32  # not a server's tensors: converted as declared
