"""Tiny ONNX graphs built with `onnx.helper` for the model-file tests: y = x `operation` c, x and y
FP32 [-1, 2], so that an answer says which graph (which version) gave it. Import it after
`pytest.importorskip("onnx")`."""

from __future__ import annotations

from onnx import TensorProto, helper


def graph_bytes(operation: str, constant: float) -> bytes:
    """y = x `operation` constant ("Add", "Mul"...), x and y FP32 [-1, 2]."""
    node = helper.make_node(operation, ["x", "c"], ["y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[helper.make_tensor("c", TensorProto.FLOAT, [1], [constant])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()  # type: ignore[no-any-return]


def adder_bytes(constant: float) -> bytes:
    """y = x + constant."""
    return graph_bytes("Add", constant)
