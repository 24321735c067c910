"""Turning what came back from a server into the typed errors of `modelpod.errors`.

Both transports end here, so a `NotFound` is a `NotFound` and a `ModelError` carries the
server's error id whether it came over HTTP or gRPC.
"""

from __future__ import annotations

import math

from modelpod.errors import Interrupted, ModelError, ModelpodError, Unavailable


def server_error(
    error: ModelpodError,
    error_id: str | None = None,
    retry_after: str | None = None,
    named: str | None = None,
) -> ModelpodError:
    """The error a server reported, completed with its error id or Retry-After, when it sent them.

    An unavailability the server did not name as its own (a model's own 503, a proxy in between, a
    connection that broke) may have run the request: it becomes `Interrupted`, never resent blindly.
    """
    if isinstance(error, Unavailable) and named is None:
        error = Interrupted(error.message)
    if isinstance(error, ModelError) and error_id:
        return ModelError(_without_error_id(error.message, error_id), error_id)
    if isinstance(error, Unavailable):
        error.retry_after = parse_retry_after(retry_after)
    return error


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After value; None when absent or not a number (HTTP dates are not used)."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _without_error_id(message: str, error_id: str) -> str:
    """The server's message without the `(error id …)` that `ModelError.__str__` adds back."""
    suffix = f" (error id {error_id})"
    return message[: -len(suffix)] if message.endswith(suffix) else message
