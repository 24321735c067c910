"""A span as the request path records it: ids, times and attributes in a plain object, nothing more.

Tracing (`tracing.py`) keeps OpenTelemetry's SDK off the event loop: starting and ending an SDK
span (sampler, span processors, locks, bounded attributes) cost tens of microseconds, several times
per request. A request instead records `SpanRecord`s, a few microseconds each, and the export
thread (`span_export.py`) turns the finished ones into the SDK's spans. The W3C ids are drawn from
Python's own generator, as the SDK's default id generator does.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping
from typing import Any

# A child kept on its parent span: name, start, end, attributes, links (`SpanRecord.add_child`).
Child = tuple[str, int, int, dict[str, Any] | None, tuple[tuple[int, int], ...]]
SERVER = "server"
INTERNAL = "internal"

# version-traceid-parentid-flags (W3C Trace Context); a later version may add fields after these.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


class SpanRecord:
    """One span: who it is (trace and span ids), below whom, when, and what it says."""

    __slots__ = (
        "attributes",
        "children",
        "end",
        "error",
        "kind",
        "links",
        "name",
        "parent_id",
        "remote_parent",
        "sampled",
        "span_id",
        "start",
        "state",
        "trace_id",
    )

    def __init__(
        self,
        name: str,
        trace_id: int,
        parent_id: int,
        sampled: bool,
        state: str = "",
        kind: str = INTERNAL,
        start: int | None = None,
        attributes: dict[str, Any] | None = None,
        remote_parent: bool = False,
    ) -> None:
        self.name = name
        self.trace_id = trace_id
        self.span_id = new_span_id()
        self.parent_id = parent_id  # 0: a trace's first span
        self.remote_parent = remote_parent  # the parent came in a `traceparent` from the caller
        self.sampled = sampled
        self.state = state  # the caller's `tracestate`, as it came
        self.kind = kind
        self.start = time.time_ns() if start is None else start
        self.end = 0
        self.attributes = {} if attributes is None else attributes
        self.error: str | None = None  # a failure's description: the span's status is an error
        self.links: tuple[tuple[int, int], ...] = ()  # (trace id, span id) of spans it served
        self.children: list[Child] | None = None  # see `add_child`

    def child(self, name: str, start: int, end: int, attributes: dict[str, Any] | None = None) -> SpanRecord:
        """A span within this one, already ended."""
        made = SpanRecord(
            name, self.trace_id, self.span_id, self.sampled, self.state, INTERNAL, start, attributes
        )
        made.end = end
        return made

    def add_child(
        self,
        name: str,
        start: int,
        end: int,
        attributes: dict[str, Any] | None = None,
        links: tuple[tuple[int, int], ...] = (),
    ) -> None:
        """A child span (a request's wait in the queue, its encoding, the run of the model for it
        alone), kept on this span as its name, times, attributes and links: its record is made, and
        its id drawn, when this span is exported (`spans`), off the request's path."""
        if self.children is None:
            self.children = [(name, start, end, attributes, links)]
        else:
            self.children.append((name, start, end, attributes, links))

    @property
    def span_count(self) -> int:
        """1, and a span for each child kept on it."""
        return 1 if self.children is None else 1 + len(self.children)

    def spans(self) -> list[SpanRecord]:
        """This span and the children kept on it, as records."""
        if not self.children:
            return [self]
        made = [self]
        for name, start, end, attributes, links in self.children:
            made.append(self.child(name, start, end, attributes))
            made[-1].links = links
        return made

    def __repr__(self) -> str:
        return f"SpanRecord({self.name!r}, trace {self.trace_id:032x}, span {self.span_id:016x})"


def new_span_id() -> int:
    """64 random bits, never 0 (the invalid id)."""
    while not (drawn := random.getrandbits(64)):
        pass
    return drawn


def new_trace_id() -> int:
    """128 random bits, never 0."""
    while not (drawn := random.getrandbits(128)):
        pass
    return drawn


def caller_of(carrier: Mapping[str, str]) -> tuple[int, int, int, str] | None:
    """The caller's trace id, span id, flags and `tracestate` from a `traceparent` header or
    metadata; None when there is none or it is not valid (the request then starts a trace)."""
    header = carrier.get("traceparent")
    if not header:
        return None
    found = _TRACEPARENT.match(header.strip())
    if found is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return None  # version ff is invalid; version 00 has exactly four fields
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags_hex, 16), carrier.get("tracestate") or ""
