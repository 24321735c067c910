"""What a request may ask beyond its inputs: how urgent it is, how long it may take, and which edge
it came through. The edges build them from headers and parameters with `request_options`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelpod.errors import InvalidInput
from modelpod.runtime.deadline import clamp_wait


@dataclass(frozen=True)
class Options:
    priority: int = 0
    timeout: float | None = None  # seconds from arrival; past it the request is answered Timeout
    protocol: str = "python"  # which edge it came through, for the metrics
    traffic_key: str | None = None  # keeps a caller on one version under a sticky traffic split


DEFAULT_OPTIONS = Options()


def request_options(
    priority: Any = None, timeout: Any = None, protocol: str = "python", traffic_key: str | None = None
) -> Options:
    """Options from what a transport received (header or parameter text), checked."""
    try:
        chosen_priority = int(priority) if priority not in (None, "") else 0
        seconds = float(timeout) if timeout not in (None, "") else None
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite priority
        raise InvalidInput(
            f"priority must be an integer and timeout a number, not {priority!r}, {timeout!r}"
        ) from None
    if seconds is not None and not seconds >= 0:  # also refuses NaN
        raise InvalidInput(f"timeout must be a non-negative number of seconds, not {timeout!r}")
    return Options(chosen_priority, clamp_wait(seconds), protocol, traffic_key or None)
