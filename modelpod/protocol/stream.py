"""Item streams on the wire: server-sent events, JSON lines, and msgpack frames.

A stream is its items, then exactly one final frame: `end` when the model finished, or `error`
when it failed midway, so that a client tells a finished stream from one cut short.

    text/event-stream             data: <item as JSON>         one event per item
                                  event: end, data: {}         or event: error, data: <error>
    application/jsonl             {"item": <item>}             one line per item
                                  {"end": true}                or {"error": ...}
    application/vnd.modelpod.msgpack-stream
                                  the JSON lines' maps as msgpack values, back to back (numpy arrays
                                  and bytes arrive exact: modelpod's client asks for this one)

An error is `{"error": message, "type": "ModelError", "status": 500, "error_id": "…"}`: the
error's class, its HTTP status by the one table, and the error id or retry hint where it has one.
An item may be an `Event`, which names its server-sent event (`event: <name>`; `"event"` in the
other formats).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from modelpod.errors import ModelError, ModelpodError, Unavailable, http_status
from modelpod.protocol import jsoncodec, native

EVENT_STREAM = "text/event-stream"
JSON_LINES = "application/jsonl"
MSGPACK_STREAM = "application/vnd.modelpod.msgpack-stream"
_FORMATS = {
    EVENT_STREAM: EVENT_STREAM,
    JSON_LINES: JSON_LINES,
    "application/x-ndjson": JSON_LINES,
    "application/jsonlines": JSON_LINES,
    MSGPACK_STREAM: MSGPACK_STREAM,
}


class Event(NamedTuple):
    """An item with a name: a server-sent event's `event:` field (`progress`, `result`, …)."""

    name: str
    data: Any


def negotiate(accept: str) -> str | None:
    """The stream format an Accept header asks for; None when it asks for none of them."""
    for part in accept.split(","):
        media_type = part.split(";")[0].strip().lower()
        if media_type in _FORMATS:
            return _FORMATS[media_type]
    return None


def error_document(error: ModelpodError) -> dict[str, Any]:
    document: dict[str, Any] = {
        "error": str(error),
        "type": type(error).__name__,
        "status": http_status(error),
    }
    if isinstance(error, ModelError):
        document["error_id"] = error.error_id
    if isinstance(error, Unavailable) and error.retry_after is not None:
        document["retry_after"] = error.retry_after
    return document


def encode_item(media_type: str, item: Any) -> bytes:
    """One item's frame; `TypeError` when the format cannot carry it (JSON has no such value)."""
    name, data = (item.name, item.data) if isinstance(item, Event) else (None, item)
    if media_type == EVENT_STREAM:
        return _event(name, jsoncodec.dumps(data))
    frame = {"item": data} if name is None else {"event": name, "item": data}
    return _frame(media_type, frame)


def encode_end(media_type: str) -> bytes:
    if media_type == EVENT_STREAM:
        return _event("end", b"{}")
    return _frame(media_type, {"end": True})


def encode_error(media_type: str, error: ModelpodError) -> bytes:
    document = error_document(error)
    if media_type == EVENT_STREAM:
        return _event("error", jsoncodec.dumps(document))
    return _frame(media_type, document)


def _event(name: str | None, data: bytes) -> bytes:
    # compact JSON holds no newline, so one `data:` line carries the whole item
    return (b"event: " + name.encode() + b"\n" if name else b"") + b"data: " + data + b"\n\n"


def _frame(media_type: str, frame: dict[str, Any]) -> bytes:
    if media_type == MSGPACK_STREAM:
        return native.pack(frame)
    return jsoncodec.dumps(frame) + b"\n"


class FrameReader:
    """The frames of a msgpack stream, from its bytes as they arrive (a frame may span chunks)."""

    def __init__(self) -> None:
        self._unpacker = native.unpacker()

    def feed(self, chunk: bytes) -> Iterator[dict[str, Any]]:
        """The frames this chunk completes; `ValueError` for bytes that are no such frame."""
        self._unpacker.feed(chunk)
        for frame in self._unpacker:
            if not isinstance(frame, dict):
                raise ValueError(f"a stream frame must be a map, not {type(frame).__name__}")
            yield frame
