"""Open Inference Protocol metadata: the server and model descriptions, as JSON and as gRPC messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.types import TensorSpec


def server_metadata_json(name: str, version: str, extensions: Sequence[str] = ()) -> dict[str, Any]:
    """The body of `GET /v2`."""
    return {"name": name, "version": version, "extensions": list(extensions)}


def model_metadata_json(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    """The body of `GET /v2/models/{name}`."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [spec.as_dict() for spec in inputs],
        "outputs": [spec.as_dict() for spec in outputs],
    }


def model_metadata_grpc(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> pb.ModelMetadataResponse:
    """The `ModelMetadataResponse` for the same facts as `model_metadata_json`."""
    return pb.ModelMetadataResponse(**model_metadata_json(name, versions, platform, inputs, outputs))
