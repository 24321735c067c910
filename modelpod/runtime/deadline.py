"""By when the model call being run must be answered, for code that can abandon it.

The service sets it for a call of one request, and a batcher for a batch (its latest deadline); a
worker process still computing past it is abandoned and replaced, like one past the model's own
timeout. A context variable, so it follows the call onto the thread that runs it.
"""

from __future__ import annotations

import math
from contextvars import ContextVar

call_deadline: ContextVar[float | None] = ContextVar("modelpod_call_deadline", default=None)
"""When the model call being run must be answered (`time.monotonic()`), if it has a deadline."""

MAX_WAIT_SECONDS = 1_000_000.0
"""The longest timeout or deadline the server arms (about 11.6 days). A pipe's `poll` takes whole
milliseconds in a C int (at most about 24.8 days) and raises OverflowError past it, and a lock's
wait has a bound of its own (`threading.TIMEOUT_MAX`): any longer wait a client asks for
(`Request-Timeout: 1e9`, `inf`, a gRPC deadline of years) is this one, which no request outlives."""


def clamp_wait(seconds: float | None, ceiling: float | None = None) -> float | None:
    """`seconds` (None: no limit) within what the platform can wait for, and within `ceiling` (the
    model's own timeout, when it has one). Every timeout and deadline the server waits on goes here."""
    if seconds is None:
        return ceiling if ceiling is None else min(ceiling, MAX_WAIT_SECONDS)
    if math.isnan(seconds):  # no wait can be armed with it; request_options refuses it, this is a floor
        return 0.0
    limit = MAX_WAIT_SECONDS if ceiling is None else min(ceiling, MAX_WAIT_SECONDS)
    return min(max(seconds, 0.0), limit)
