"""The benchmark MLP as an MLServer custom runtime: MLServer's documented `MLModel` subclass.

Loaded by `mlserver start` (see `mlserver_server.py`) in MLServer's own virtual environment.
With adaptive batching on, MLServer concatenates the waiting requests' `x` along the first axis
before `predict` and splits `y` back, so the same code serves both configurations.
"""

from __future__ import annotations

from mlp_numpy import NumpyMLP
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class MLPRuntime(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        self.net = NumpyMLP()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self.net.forward(x)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", y)])
