"""Where a request's time went (queue, compute, encode), for the slow-request log, and by when
the model call running it must end.

An edge starts a `RequestTiming` for each request; it lives in a context variable, so the service
and the model threads (which run in a copy of the request's context) fill in the same object, and
the batcher, which runs requests on a thread of its own, is handed it with the request.
"""

from __future__ import annotations

import logging
import math
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

logger = logging.getLogger("modelpod.slow")


@dataclass
class RequestTiming:
    started: float = field(default_factory=time.monotonic)
    model: str = ""  # empty until the request reaches a model: only those are logged
    version: str = ""
    queue: float = 0.0  # seconds waiting for a batch or a model thread
    compute: float = 0.0  # seconds the model call (or the batch it ran in) took
    answered: float | None = None  # when the service had the answer; the rest is encoding

    def ran(self, queue: float, compute: float) -> None:
        self.queue, self.compute = queue, compute

    def log_if_slow(self, threshold_ms: float) -> None:
        """Log the breakdown of a request to a model that took `threshold_ms` or longer."""
        now = time.monotonic()
        total = now - self.started
        if not self.model or total * 1000 < threshold_ms:
            return
        encode = now - self.answered if self.answered is not None else 0.0
        other = max(total - self.queue - self.compute - encode, 0.0)
        logger.warning(
            "slow request to %s version %s: %.1f ms (queue %.1f ms, compute %.1f ms, encode %.1f ms, "
            "other %.1f ms; threshold %.0f ms)",
            self.model, self.version, total * 1000, self.queue * 1000, self.compute * 1000,
            encode * 1000, other * 1000, threshold_ms,
        )  # fmt: skip


current: ContextVar[RequestTiming | None] = ContextVar("modelpod_request_timing", default=None)

call_deadline: ContextVar[float | None] = ContextVar("modelpod_call_deadline", default=None)
"""When the model call being run must be answered (`time.monotonic()`), if it has a deadline: a worker
process still computing it then is abandoned and replaced, like one past the model's own timeout.
Set by the service for a call of one request, and by a batcher for a batch (its latest deadline)."""


def begin() -> RequestTiming:
    """Start timing the request of the current context."""
    timing = RequestTiming()
    current.set(timing)
    return timing


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
