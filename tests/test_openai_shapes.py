"""OpenAI's embeddings body as the server writes it: vectors as lists or arrays, float or base64."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from modelpod.errors import ModelError
from modelpod.protocol import jsoncodec, openai_shapes


def _written(vectors: list[object], encoding: str = "float") -> list[object]:
    body = jsoncodec.loads(jsoncodec.dumps(openai_shapes.embeddings("m", vectors, encoding, 3)))
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    return [item["embedding"] for item in body["data"]]


def test_lists_and_arrays_of_any_float_width_are_written_as_numbers() -> None:
    float32 = np.array([0.1, -2.5, 3.0], dtype=np.float32)
    written = _written([[0.25, 1.0, 2], float32, np.arange(3, dtype=np.float64)[::-1], (1, 2, 3)])
    assert written[0] == [0.25, 1.0, 2]
    np.testing.assert_array_equal(np.array(written[1], dtype=np.float32), float32)  # float32 exactly
    assert written[2] == [2.0, 1.0, 0.0]  # a strided view
    assert written[3] == [1.0, 2.0, 3.0]


def test_base64_is_the_little_endian_float32_bytes() -> None:
    (text,) = _written([np.array([1.5, -2.0], dtype=np.float64)], "base64")
    assert isinstance(text, str)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(text), dtype="<f4"), [1.5, -2.0])


def test_an_answer_that_is_no_vector_is_the_model_s_error() -> None:
    with pytest.raises(ModelError, match="shape"):
        openai_shapes.embeddings("m", [np.zeros((2, 2))], "float", None)
