"""By when the model call being run must be answered, for code that can abandon it.

The service sets it for a call of one request, and a batcher for a batch (its latest deadline); a
worker process still computing past it is abandoned and replaced, like one past the model's own
timeout. A context variable, so it follows the call onto the thread that runs it.
"""

from __future__ import annotations

from contextvars import ContextVar

call_deadline: ContextVar[float | None] = ContextVar("modelpod_call_deadline", default=None)
"""When the model call being run must be answered (`time.monotonic()`), if it has a deadline."""
