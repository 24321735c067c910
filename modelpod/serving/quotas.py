"""Quotas per caller: requests per second (a token bucket with a burst) and requests at once, for each
caller (its API key's name, else its traffic key) over all models and optionally per model.

`MODELPOD_QUOTAS="alice=rate:10,burst:20,concurrency:4;*=rate:100;alice@iris=rate:2"`: `*` is any
caller without a rule of its own, each caller counted apart. A request over a quota is refused
before it runs with `RateLimited` (429 / RESOURCE_EXHAUSTED) and the seconds after which it fits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from modelpod.errors import InvalidInput, RateLimited

ANY = "*"
CONCURRENCY_RETRY = 1.0  # seconds to suggest to a caller at its concurrency quota: its own requests end
MOST_BUCKETS = 100_000  # callers remembered at once; idle ones are forgotten first


@dataclass(frozen=True)
class Quota:
    rate: float | None = None  # requests per second, on average
    burst: float | None = None  # requests at once above the rate (default: one second's worth)
    concurrency: int | None = None  # requests running at once

    @property
    def capacity(self) -> float:
        return self.burst if self.burst is not None else max(1.0, self.rate or 1.0)


@dataclass
class _Bucket:
    tokens: float
    updated: float
    running: int = 0


class Quotas:
    """The quotas of a server's callers, and what each caller has used of them. Thread-safe."""

    def __init__(
        self, rules: dict[tuple[str, str | None], Quota], clock: Callable[[], float] = time.monotonic
    ):
        self.rules = rules  # (caller or "*", model or None: all models) -> its quota
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str | None], _Bucket] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def admit(self, caller: str, model: str | None) -> Callable[[], None]:
        """Count a request of `caller` to `model` (None: not a model's); returns what to call when it
        ends. RateLimited, counting nothing, when it is over one of its quotas."""
        scopes = (None,) if model is None else (None, model)
        applying = [(scope, quota) for scope in scopes if (quota := self._quota(caller, scope))]
        if not applying:
            return _nothing
        now = self.clock()
        with self._lock:
            buckets = [(self._bucket(caller, scope, quota, now), quota, scope) for scope, quota in applying]
            for bucket, quota, scope in buckets:
                _refill(bucket, quota, now)
                refusal = _over(bucket, quota, caller, scope)
                if refusal is not None:
                    raise refusal
            for bucket, quota, _ in buckets:
                bucket.tokens -= 1 if quota.rate is not None else 0
                bucket.running += 1
        return _releaser(self._lock, [bucket for bucket, _, _ in buckets])

    def _quota(self, caller: str, scope: str | None) -> Quota | None:
        """The caller's own quota for the scope, else the one of any caller."""
        return self.rules.get((caller, scope)) or self.rules.get((ANY, scope))

    def _bucket(self, caller: str, scope: str | None, quota: Quota, now: float) -> _Bucket:
        bucket = self._buckets.get((caller, scope))
        if bucket is None:
            if len(self._buckets) >= MOST_BUCKETS:
                self._forget_idle()
            bucket = self._buckets[caller, scope] = _Bucket(quota.capacity, now)
        return bucket

    def _forget_idle(self) -> None:
        """(Lock held) drop the callers with nothing running: at worst they get a fresh burst."""
        self._buckets = {key: bucket for key, bucket in self._buckets.items() if bucket.running}


def _refill(bucket: _Bucket, quota: Quota, now: float) -> None:
    if quota.rate is not None:
        bucket.tokens = min(quota.capacity, bucket.tokens + (now - bucket.updated) * quota.rate)
    bucket.updated = now


def _over(bucket: _Bucket, quota: Quota, caller: str, scope: str | None) -> RateLimited | None:
    where = "" if scope is None else f" for model {scope!r}"
    if quota.concurrency is not None and bucket.running >= quota.concurrency:
        return RateLimited(
            f"{caller} has {bucket.running} requests running{where}, its quota; retry when one ends",
            retry_after=CONCURRENCY_RETRY,
            limit="concurrency",
            model=scope or "",
        )
    if quota.rate is not None and bucket.tokens < 1:
        wait = (1 - bucket.tokens) / quota.rate
        return RateLimited(
            f"{caller} is over its quota of {quota.rate:g} requests per second{where}; retry in {wait:.2g} s",
            retry_after=wait,
            limit="rate",
            model=scope or "",
        )
    return None


def _releaser(lock: threading.Lock, buckets: list[_Bucket]) -> Callable[[], None]:
    released = False

    def release() -> None:
        nonlocal released
        with lock:
            if not released:
                released = True
                for bucket in buckets:
                    bucket.running -= 1

    return release


def _nothing() -> None:
    return None


def parse_quotas(text: str) -> dict[tuple[str, str | None], Quota]:
    """`alice=rate:10,burst:20,concurrency:4;*@iris=rate:2` as quotas by (caller, model)."""
    rules: dict[tuple[str, str | None], Quota] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        who, separator, limits = entry.partition("=")
        caller, _, model = who.strip().partition("@")
        if not separator or not caller.strip():
            raise InvalidInput(f"quota {entry!r} is not CALLER[@MODEL]=rate:R,burst:B,concurrency:C")
        rules[caller.strip(), model.strip() or None] = _quota_of(entry, limits)
    return rules


def _quota_of(entry: str, limits: str) -> Quota:
    values: dict[str, float] = {}
    for pair in filter(None, (p.strip() for p in limits.split(","))):
        name, colon, number = pair.partition(":")
        if not colon or name.strip() not in ("rate", "burst", "concurrency"):
            raise InvalidInput(f"quota {entry!r}: {pair!r} is not rate:R, burst:B or concurrency:C")
        try:
            values[name.strip()] = float(number)
        except ValueError:
            raise InvalidInput(f"quota {entry!r}: {number!r} is not a number") from None
        if not 0 < values[name.strip()] < float("inf"):
            raise InvalidInput(f"quota {entry!r}: {name.strip()} must be a positive number")
    if not values:
        raise InvalidInput(f"quota {entry!r} sets nothing: give rate:R, burst:B or concurrency:C")
    if "burst" in values and "rate" not in values:
        raise InvalidInput(f"quota {entry!r}: a burst needs a rate")
    concurrency = values.get("concurrency")
    if concurrency is not None and concurrency != int(concurrency):
        raise InvalidInput(f"quota {entry!r}: concurrency must be a whole number")
    return Quota(values.get("rate"), values.get("burst"), None if concurrency is None else int(concurrency))
