"""Models for the end-to-end protocol tests (tritonclient, raw gRPC).

`Identity`: a tensor model for every Open Inference Protocol datatype.

`Identity` declares one input per datatype, named after it (`BOOL`, `UINT8`, ..., `BYTES`), and
answers each input it was given as the output of the same name. Declaring the inputs is what
makes it a tensor model: it receives the decoded arrays whole, batch first. Since a declared
spec makes the runner convert an input to the declared dtype, declaring the *exact* datatype
of each input makes that conversion a no-op, so what comes back is what went over the wire,
dtype and all. (A keyword-argument model would not do: it is fed row by row and its rows are
stacked back, which turns BYTES rows into JSON documents.)

A request may carry any subset of the inputs; the model answers only those.

`Unencodable` answers what no protocol can carry; `Mirror` answers its keyword arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelpod import Model, TensorSpec

DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES")  # fmt: skip


class Identity(Model):
    """Every input comes back unchanged, as the output of the same name."""

    name = "identity"
    inputs = tuple(TensorSpec(datatype, datatype, (-1, -1)) for datatype in DATATYPES)
    outputs = tuple(TensorSpec(datatype, datatype, (-1, -1)) for datatype in DATATYPES)

    def predict(self, **tensors: np.ndarray) -> dict[str, Any]:
        return dict(tensors)


class Unencodable(Model):
    """Answers a complex array, which no protocol datatype can carry: a bug in the model."""

    name = "unencodable"
    inputs = (TensorSpec("x", "FP32", (-1, -1)),)
    outputs = (TensorSpec("y", "FP32", (-1, -1)),)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.complex64)


class Mirror(Model):
    """A keyword-argument model that answers its arguments as they came, for the native service."""

    name = "mirror"

    def predict(self, **fields: Any) -> dict[str, Any]:
        return fields
