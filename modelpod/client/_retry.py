"""When to send a request again, and how long to wait first: pure decisions, no sleeping.

The blocking and the asyncio client each run the same loop around `Backoff.delay`, sleeping
with `time.sleep` or `asyncio.sleep`; everything that is decided is decided here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from modelpod.client._operations import Retry
from modelpod.errors import Interrupted, ModelpodError, Unavailable


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: 0.1 s, 0.2 s, 0.4 s, … at most 2 s, `retries` times.

    Each wait is drawn between half and all of its step ("equal jitter"), so clients that
    failed together do not come back together, yet never retry at once. A `Retry-After` from
    the server replaces a shorter wait; one longer than `longest_wait` is not waited for: the
    error is raised at once, carrying `retry_after` for the caller to decide.
    """

    retries: int = 3
    first: float = 0.1
    most: float = 2.0
    longest_wait: float = 10.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")

    def delay(self, retry: Retry, attempt: int, error: ModelpodError) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to raise `error` now."""
        if attempt >= self.retries or not may_retry(retry, error):
            return None
        step = min(self.most, self.first * 2.0**attempt)
        wait = step / 2 + random.uniform(0, step / 2)
        retry_after = error.retry_after if isinstance(error, Unavailable) else None
        if retry_after is None:
            return wait
        return max(wait, retry_after) if retry_after <= self.longest_wait else None


def may_retry(retry: Retry, error: ModelpodError) -> bool:
    """Only an unavailable server is worth asking again, and only for what is safe to repeat."""
    if retry is Retry.NEVER or not isinstance(error, Unavailable):
        return False
    return retry is Retry.ALWAYS or not isinstance(error, Interrupted)
