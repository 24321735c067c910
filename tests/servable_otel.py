"""A model with OpenTelemetry instrumentation of its own: its span should join the request's trace."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from modelpod import Model


class Instrumented(Model):
    """Records a span of its own around its work, with the process's tracer provider."""

    name = "instrumented"
    example = {"text": "warm-up"}

    def predict(self, text: str) -> dict[str, Any]:
        with trace.get_tracer("the model").start_as_current_span("inside the model"):
            return {"text": text.upper()}
