"""Span records as OTLP protobuf bytes (an `ExportTraceServiceRequest`), written directly.

The SDK's encoder builds a protobuf object per span, per attribute and per value, in Python: about
forty microseconds a span, which at several spans per request costs more than the request itself.
This writes the same message straight from `SpanRecord`s: the resource and scope once per batch,
each attribute's encoded key and value kept once made (a server's attributes repeat: the same
models, routes and statuses), each span a few varints around them. The message is what the SDK's
`encode_spans` makes of the same spans (a test checks it, field by field).

Field numbers: opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from modelpod.observe.span_records import INTERNAL, SERVER, SpanRecord, new_span_id

_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags: whether the parent's context came from afar
_STATUS_ERROR = 2
_CACHED = 4096  # encoded attributes kept at most (then the cache starts over)
_TIMES = struct.Struct("<BQBQ")  # start and end: fields 7 and 8, fixed64
_UNSET = b"\x7a\x00"  # field 15: an empty status
_LOCAL_PARENT = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)  # field 16, fixed32
_REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_CHILD_TAIL = _UNSET + _LOCAL_PARENT  # a child kept on a record: an empty status, a local parent
_LINK_FLAGS = b"\x35" + struct.pack("<I", _HAS_IS_REMOTE)  # Link.flags, field 6
# A link, field 13, of 33 bytes (trace id 2+16, span id 2+8, flags 5), up to its trace id's bytes.
_LINK_HEAD = b"\x6a\x21\x0a\x10"


_SMALL = [bytes((i,)) for i in range(0x80)]  # one-byte varints, made once


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string, bytes or a message."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """An AnyValue message."""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(6, b"".join(_field(1, _key_value(str(k), v)) for k, v in value.items()))
    if value is None:
        return b""
    raise TypeError(f"an attribute of type {type(value).__name__} cannot be exported")


def _links(links: Sequence[tuple[int, int]]) -> bytes:
    """A span's links (field 13, repeated), each a (trace id, span id) of a local span."""
    return b"".join(
        _LINK_HEAD + t.to_bytes(16, "big") + b"\x12\x08" + s.to_bytes(8, "big") + _LINK_FLAGS
        for t, s in links
    )


def _key_value(key: str, value: Any) -> bytes:
    return _field(1, key.encode()) + _field(2, _any_value(value))


class OtlpEncoder:
    """Writes batches of span records for one resource and one instrumentation scope."""

    def __init__(
        self, resource: Mapping[str, Any], scope: str, version: str, resource_schema: str = ""
    ) -> None:
        self._resource = _field(1, b"".join(_field(1, _key_value(k, v)) for k, v in resource.items()))
        self._resource_schema = _field(3, resource_schema.encode()) if resource_schema else b""
        self._scope = _field(1, _field(1, scope.encode()) + _field(2, version.encode()))
        self._attributes: dict[tuple[str, Any, type], bytes] = {}
        self._states: dict[str, bytes] = {}
        self._names: dict[tuple[str, str], bytes] = {}
        self._blocks: dict[tuple[tuple[str, Any], ...], bytes] = {}
        self.trace_state: Callable[[str], str] = _trace_state  # the caller's `tracestate` as exported

    def request(self, records: Iterable[SpanRecord]) -> bytes:
        """An `ExportTraceServiceRequest` of the records, each with the children kept on it
        (`SpanRecord.add_child`), which share their parent's trace id, state and (as their parent
        id) span id: those are written once per record, their own ids drawn now."""
        spans: list[bytes] = []
        for record in records:
            trace = b"\x0a\x10" + record.trace_id.to_bytes(16, "big") + b"\x12\x08"  # fields 1, 2
            own = record.span_id.to_bytes(8, "big")
            state = self._state(record.state) if record.state else b""
            parent = b"\x22\x08" + record.parent_id.to_bytes(8, "big") if record.parent_id else b""
            self._span(spans, trace + own + state + parent, record.name, record.kind, record.start,
                       record.end, record.attributes, record.links, self._status(record))  # fmt: skip
            if record.children:
                under = state + b"\x22\x08" + own
                for name, begun, ended, attributes, links in record.children:
                    ids = trace + new_span_id().to_bytes(8, "big") + under
                    self._span(spans, ids, name, INTERNAL, begun, ended, attributes, links, _CHILD_TAIL)
        scope_spans = _field(2, self._scope + b"".join(spans))
        return _field(1, self._resource + scope_spans + self._resource_schema)

    def _span(
        self,
        spans: list[bytes],
        ids: bytes,
        name: str,
        kind: str,
        start: int,
        end: int,
        attributes: Mapping[str, Any] | None,
        links: Sequence[tuple[int, int]],
        tail: bytes,
    ) -> None:
        """A `Span` message, as `ScopeSpans.spans` (field 2), appended to `spans`: its fields in their
        numbers' order, as protobuf writes them; `ids` holds fields 1 to 4, `tail` 15 and 16."""
        body = b"".join(
            (
                ids,
                self._named(name, kind),
                _TIMES.pack(0x39, start, 0x41, end),
                self._attributes_of(attributes) if attributes else b"",
                _links(links) if links else b"",
                tail,
            )
        )
        spans.append(b"\x12" + _varint(len(body)) + body)

    @staticmethod
    def _status(record: SpanRecord) -> bytes:
        """A record's status (an error's description, or empty) and its parent's flags."""
        flags = _REMOTE_PARENT if record.remote_parent else _LOCAL_PARENT
        if record.error is None:
            return _UNSET + flags
        return _field(15, _field(2, record.error.encode()) + b"\x18" + bytes([_STATUS_ERROR])) + flags

    def _attributes_of(self, attributes: Mapping[str, Any]) -> bytes:
        """A span's attributes (field 9, repeated), made once per set of keys and values: a server's
        spans repeat theirs (the same models, routes, outcomes)."""
        try:
            key = tuple(attributes.items())
            found = self._blocks.get(key)
        except TypeError:  # a value that cannot be a key (a list): made each time
            return b"".join(self._attribute(name, value) for name, value in attributes.items())
        if found is None:
            if len(self._blocks) >= _CACHED:
                self._blocks.clear()
            found = self._blocks[key] = b"".join(self._attribute(n, v) for n, v in attributes.items())
        return found

    def _named(self, name: str, kind: str) -> bytes:
        """A span's name and kind fields (5 and 6), made once per name."""
        found = self._names.get((name, kind))
        if found is None:
            if len(self._names) >= _CACHED:
                self._names.clear()
            encoded = _field(5, name.encode()) + b"\x30" + (b"\x02" if kind == SERVER else b"\x01")
            found = self._names[name, kind] = encoded
        return found

    def _state(self, header: str) -> bytes:
        found = self._states.get(header)
        if found is None:
            if len(self._states) >= _CACHED:
                self._states.clear()
            state = self.trace_state(header)
            found = self._states[header] = _field(3, state.encode()) if state else b""
        return found

    def _attribute(self, key: str, value: Any) -> bytes:
        """A span's attribute as its `attributes` field (number 9), made once per key and value."""
        cache_key = (key, value, type(value)) if isinstance(value, str | int | float | bool) else None
        if cache_key is not None:
            found = self._attributes.get(cache_key)
            if found is not None:
                return found
        encoded = _field(9, _key_value(key, value))
        if cache_key is not None:
            if len(self._attributes) >= _CACHED:
                self._attributes.clear()
            self._attributes[cache_key] = encoded
        return encoded


def _trace_state(header: str) -> str:
    """The caller's `tracestate` as the SDK re-writes it: its list members, `key=value` joined by
    commas (blank members and spaces dropped)."""
    members = [member.strip() for member in header.split(",")]
    return ",".join(member for member in members if member)
