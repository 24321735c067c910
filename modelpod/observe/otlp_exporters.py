"""The SDK's OTLP exporters, taught to send a batch already encoded (`otlp_encoding`).

Everything else is theirs: the endpoint, headers, TLS, compression, timeouts and retries of the
standard `OTEL_EXPORTER_OTLP_*` variables. Each exporter's `export_encoded` returns None where the
installed SDK lacks the inner call it uses: the export thread then hands it the SDK's spans instead.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class Encoded:
    """A batch as OTLP bytes, with its span count (what the gRPC exporter's counting asks)."""

    __slots__ = ("count", "payload")

    def __init__(self, payload: bytes, count: int) -> None:
        self.payload = payload
        self.count = count

    def __len__(self) -> int:
        return self.count


def otlp_exporter() -> SpanExporter:
    """The OTLP exporter the standard variables ask for: gRPC, or HTTP with protobuf (the default)."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip() == "grpc":
        return _grpc_exporter()
    return _http_exporter()


def _grpc_exporter() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    class GrpcExporter(OTLPSpanExporter):
        def export_encoded(self, batch: Encoded) -> bool | None:
            if not hasattr(self, "_export"):
                return None
            return bool(self._export(batch) == SpanExportResult.SUCCESS)  # type: ignore[arg-type]

        def _translate_data(self, data: Any) -> Any:
            if isinstance(data, Encoded):  # parsed in C, not built a field at a time
                return ExportTraceServiceRequest.FromString(data.payload)
            return super()._translate_data(data)

    return GrpcExporter()


def _http_exporter() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    class HttpExporter(OTLPSpanExporter):
        def export_encoded(self, batch: Encoded) -> bool | None:
            client = getattr(self, "_client", None)
            if getattr(self, "_shutdown", False) or not hasattr(client, "export"):
                return None
            return bool(client.export(batch.payload).success)  # type: ignore[union-attr]

    return HttpExporter()
