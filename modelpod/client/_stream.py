"""A stream's items from the bytes of its frames: the part both HTTP transports share.

The server ends every stream with one last frame, `end` or `error` (see `modelpod.protocol.stream`);
an error frame raises its typed error here, after the items before it, and a stream whose bytes
stop without either raises `Interrupted`, so a cut-off stream never passes for a finished one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from modelpod.client._errors import server_error
from modelpod.errors import Interrupted, InvalidInput, ModelpodError, from_error_name, from_http_status
from modelpod.protocol.stream import FrameReader


class ItemReader:
    """Feed it a stream's bytes as they arrive; it gives back the items they complete."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.ended = False
        self._frames = FrameReader()

    def feed(self, chunk: bytes) -> Iterator[Any]:
        for frame in self._frames_of(chunk):
            if self.ended:
                raise self._malformed("a frame after the stream's end")
            if "item" in frame:
                yield frame["item"]
            elif frame.get("end") is True:
                self.ended = True
            elif isinstance(frame.get("error"), str):
                raise stream_error(frame)
            else:
                raise self._malformed(f"a frame of unknown kind, with keys {sorted(frame)}")

    def _frames_of(self, chunk: bytes) -> list[dict[str, Any]]:
        try:
            return list(self._frames.feed(chunk))
        except (ValueError, InvalidInput) as error:  # InvalidInput: an array that does not decode
            raise self._malformed(str(error)) from None

    def _malformed(self, what: str) -> ModelpodError:
        return ModelpodError(f"the server at {self.address} sent a malformed stream: {what}")

    def finish(self) -> None:
        """At the end of the bytes: `Interrupted` unless the stream said it was complete."""
        if not self.ended:
            raise Interrupted(f"the stream from {self.address} stopped before its end")


def stream_error(document: Mapping[str, Any]) -> ModelpodError:
    """The typed error an error frame describes, with its error id and retry hint."""
    message = str(document["error"])
    named = document.get("type") if isinstance(document.get("type"), str) else None
    status = document.get("status")
    error = from_error_name(named, message) or from_http_status(
        status if isinstance(status, int) else 500, message
    )
    retry_after = document.get("retry_after")
    error_id = document.get("error_id")
    return server_error(
        error,
        error_id if isinstance(error_id, str) else None,
        None if retry_after is None else str(retry_after),
        named,
    )
