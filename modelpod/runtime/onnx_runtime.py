"""Serve an ONNX graph with onnxruntime (the `onnx` extra).

Inputs and outputs (names, datatypes, shapes) come from the graph; a dimension the graph leaves
free is -1. When every input and output has a free first dimension, requests are batched.

The execution provider follows the device the Runner chose (`device=`, or the best one found):
CUDA on a CUDA device when onnxruntime has the CUDA provider, else the CPU. Thread settings:
`intra_op_threads` and `inter_op_threads` (class attributes, or options: `Runner(path,
intra_op_threads=2)`, `modelpod serve model.onnx --runtime-option intra_op_threads=2`).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelpod.errors import ModelLoadError
from modelpod.extras import needs_extra
from modelpod.runtime.file_model import Arrays, Description, FileModel, batch_first
from modelpod.types import TensorSpec

logger = logging.getLogger("modelpod.runtime.onnx_runtime")

# onnxruntime's element types -> Open Inference Protocol datatypes
DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _onnxruntime(path: Path) -> Any:
    with needs_extra("onnx", f"serving {path.name}"):
        import onnxruntime

    return onnxruntime


def _spec(argument: Any) -> TensorSpec | None:
    """A graph input or output as a spec; None for one that is no tensor (a sequence, a map)."""
    datatype = DATATYPES.get(argument.type)
    if datatype is None:
        return None
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in argument.shape)
    return TensorSpec(argument.name, datatype, shape)


@lru_cache(maxsize=64)
def _describe(path: str, stamp: tuple[int, int]) -> Description:
    ort = _onnxruntime(Path(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only to read it
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for a damaged graph
        raise ModelLoadError(f"{path} is not an ONNX graph onnxruntime can load: {error}") from None
    inputs = []
    for argument in session.get_inputs():
        spec = _spec(argument)
        if spec is None:
            raise ModelLoadError(f"{path}: input {argument.name!r} is a {argument.type}, not a tensor")
        inputs.append(spec)
    outputs = []
    for argument in session.get_outputs():
        spec = _spec(argument)
        if spec is None:  # e.g. skl2onnx's ZipMap: convert with zipmap=False to serve it
            logger.warning(
                "%s: output %r is a %s, not a tensor: not served", path, argument.name, argument.type
            )
            continue
        outputs.append(spec)
    if not outputs:
        raise ModelLoadError(f"{path}: the graph has no tensor outputs to serve")
    specs = (*inputs, *outputs)
    return Description(tuple(inputs), tuple(outputs), batchable=batch_first(specs))


def providers_for(device: str, available: list[str]) -> list[Any]:
    """The execution providers for a device: CUDA (that GPU) then CPU on a CUDA device when the
    provider is there, else the CPU alone."""
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if device.startswith("cuda"):
        logger.warning("device %s: onnxruntime has no CUDA provider (pip install onnxruntime-gpu); "
                       "running on the CPU", device)  # fmt: skip
    return ["CPUExecutionProvider"]


class OnnxModel(FileModel):
    """An ONNX graph run by onnxruntime. Subclass it to add processing."""

    runtime_name: ClassVar[str] = "onnx"
    platform: ClassVar[str] = "onnxruntime_onnx"
    intra_op_threads: ClassVar[int | None] = None  # threads inside one operator (None: onnxruntime's)
    inter_op_threads: ClassVar[int | None] = None  # operators run at once (None: onnxruntime's)

    session: Any = None

    def describe(self) -> Description:
        status = self.path.stat()
        return _describe(str(self.path.resolve()), (status.st_mtime_ns, status.st_size))

    def setup(self) -> None:
        ort = _onnxruntime(self.path)
        options = ort.SessionOptions()
        intra = self.config.get("intra_op_threads", self.intra_op_threads)
        inter = self.config.get("inter_op_threads", self.inter_op_threads)
        if intra is not None:
            options.intra_op_num_threads = int(intra)
        if inter is not None:
            options.inter_op_num_threads = int(inter)
        providers = providers_for(self.device, ort.get_available_providers())
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self._output_names = [spec.name for spec in self.description.outputs]
        self._strings = {spec.name for spec in self.description.inputs if spec.datatype == "BYTES"}

    def teardown(self) -> None:
        self.session = None

    def run(self, inputs: Arrays) -> Arrays:
        feed = {name: _text(value) if name in self._strings else value for name, value in inputs.items()}
        answers = self.session.run(self._output_names, feed)
        return dict(zip(self._output_names, answers, strict=True))

    def providers(self) -> list[str]:
        """The execution providers the loaded session runs on, first choice first."""
        return list(self.session.get_providers()) if self.session is not None else []


def _text(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """onnxruntime takes strings, where the protocol brings BYTES as bytes."""
    as_text = [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    return np.array(as_text, dtype=object).reshape(array.shape)
