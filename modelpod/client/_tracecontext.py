"""The caller's trace, sent with each request: when the program around the client traces with
OpenTelemetry, a request joins the trace of the span current where it is made (W3C `traceparent`
and `tracestate`, in HTTP headers and gRPC metadata).

The client never imports OpenTelemetry itself: a program that has not loaded it has no trace to
continue, and pays one dictionary lookup per request.
"""

from __future__ import annotations

import sys

Metadata = tuple[tuple[str, str | bytes], ...]


def trace_headers() -> dict[str, str]:
    """The current trace context as headers; empty when the program does not trace."""
    if "opentelemetry.trace" not in sys.modules:
        return {}
    try:
        from opentelemetry import propagate
    except ImportError:  # pragma: no cover - a partial installation
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def with_trace(metadata: Metadata | None) -> Metadata | None:
    """gRPC metadata with the current trace context added, when there is one."""
    headers = trace_headers()
    if not headers:
        return metadata
    return (*(metadata or ()), *headers.items())
