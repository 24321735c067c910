"""The LRU pool of loaded model instances.

- Bounded per model (how many versions of one model stay loaded) and, optionally, by memory:
  for all models together, and for the versions of one model (its `memory_budget`). Each
  instance's cost is measured when it loads; before a load, the cost is taken to be what the
  same version, else another version of the model, cost last time, so that room is made before
  a budget is exceeded rather than after.
- Loads take a lock per instance, never one for the whole pool: a slow load of one version does
  not stall requests to another, and concurrent first requests load an instance once.
- An instance with requests in flight is never torn down under them: eviction retires it, and the
  last request to finish tears it down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from modelpod.runtime.memory import release_freed_memory, used_bytes

logger = logging.getLogger("modelpod.serving.pool")

Key = tuple[str, str]  # (model name, version)


class Loadable(Protocol):
    """What the pool holds: a Runner, or a ProcessRunner standing for worker processes."""

    def load(self) -> None: ...

    def close(self) -> None: ...


R = TypeVar("R", bound=Loadable)


@dataclass
class _Entry:
    key: Key
    runner: Loadable
    cost_bytes: int
    in_flight: int = 0
    retiring: bool = False


@dataclass
class PoolStats:
    loads: int = 0
    load_failures: int = 0
    evictions: int = 0
    load_seconds: float = 0.0
    loaded: list[Key] = field(default_factory=list)
    memory_bytes: int = 0
    costs: dict[Key, int] = field(default_factory=dict)  # measured memory of each loaded version


class ModelPool:
    """Loaded runners by (name, version), least recently used first."""

    def __init__(self, per_model: int = 1, memory_budget: int | None = None) -> None:
        if per_model < 1:
            raise ValueError("per_model must be at least 1")
        self.per_model = per_model
        self.memory_budget = memory_budget
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._retiring: list[_Entry] = []
        self._lock = threading.Lock()
        self._load_locks: dict[Key, threading.Lock] = {}
        self._costs: dict[Key, int] = {}
        self._pinned: set[Key] = set()
        self._stats = PoolStats()
        self.load_errors: dict[Key, str] = {}

    @contextmanager
    def use(self, key: Key, factory: Callable[[], R], model_budget: int | None = None) -> Iterator[R]:
        """The loaded runner for `key`, loading it with `factory` if needed, held while in use.

        `model_budget`: bytes the loaded versions of this model may take together."""
        entry = self._acquire(key) or self._load(key, factory, model_budget)
        try:
            yield cast(R, entry.runner)
        finally:
            self._release(entry)

    def use_if_loaded(self, key: Key) -> _HeldIfLoaded:
        """The runner for `key` if it is loaded, held while in use; None if it is not. Never loads,
        and a version evicted meanwhile is torn down on a thread of its own: for a caller on the
        event loop, which must not block. (A class, not a generator: every request passes here.)"""
        return _HeldIfLoaded(self, key)

    def _acquire(self, key: Key) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.in_flight += 1
                self._entries.move_to_end(key)
            return entry

    def _load(self, key: Key, factory: Callable[[], Loadable], model_budget: int | None) -> _Entry:
        with self._lock:
            key_lock = self._load_locks.setdefault(key, threading.Lock())
        with key_lock:
            entry = self._acquire(key)  # someone else may have loaded it while we waited
            if entry is not None:
                return entry
            self._make_room(key, self._expected_cost(key), model_budget)
            return self._load_now(key, factory, model_budget)

    def _expected_cost(self, key: Key) -> int:
        """What loading `key` will cost: its last cost, else the largest of its model's other versions."""
        with self._lock:
            if key in self._costs:
                return self._costs[key]
            return max((cost for other, cost in self._costs.items() if other[0] == key[0]), default=0)

    def _load_now(self, key: Key, factory: Callable[[], Loadable], model_budget: int | None) -> _Entry:
        before, started = used_bytes(), time.perf_counter()
        try:
            runner = factory()
            runner.load()
        except Exception as error:
            with self._lock:
                self._stats.load_failures += 1
                self.load_errors[key] = str(error)
            raise
        seconds = time.perf_counter() - started
        own_memory = getattr(runner, "memory_bytes", None)  # worker processes measure themselves
        cost = own_memory() if own_memory is not None else max(used_bytes() - before, 0)
        entry = _Entry(key, runner, cost, in_flight=1)
        with self._lock:
            self._entries[key] = entry
            self._costs[key] = cost
            self.load_errors.pop(key, None)
            self._stats.loads += 1
            self._stats.load_seconds += seconds
        logger.info("loaded %s:%s in %.2f s (%.1f MiB)", *key, seconds, cost / 2**20)
        if model_budget is not None and cost > model_budget:
            logger.warning("%s:%s alone takes %.1f MiB, over its model's memory budget of %.1f MiB",
                           *key, cost / 2**20, model_budget / 2**20)  # fmt: skip
        self._make_room(key, 0, model_budget)
        return entry

    def _release(self, entry: _Entry, off_thread: bool = False) -> None:
        with self._lock:
            entry.in_flight -= 1
            done = entry.retiring and entry.in_flight == 0
            if done:
                self._retiring.remove(entry)
        if done and off_thread:
            threading.Thread(target=self._teardown, args=(entry,), name="modelpod-teardown").start()
        elif done:
            self._teardown(entry)

    def _make_room(self, incoming: Key, incoming_cost: int, model_budget: int | None = None) -> None:
        """Retire least recently used instances until the incoming one fits every bound."""
        with self._lock:
            others = [e for e in self._entries.values() if e.key != incoming and e.key not in self._pinned]
            same_model = [e for e in others if e.key[0] == incoming[0]]
            chosen = same_model[: max(len(same_model) - (self.per_model - 1), 0)]
            pending = 0 if incoming in self._entries else incoming_cost
            if model_budget is not None:
                own = [e for e in self._entries.values() if e.key[0] == incoming[0]]
                self._choose_until(model_budget, own, same_model, pending, chosen)
            if self.memory_budget is not None:
                self._choose_until(self.memory_budget, list(self._entries.values()), others, pending, chosen)
            idle = [self._retire(entry, "pool full") for entry in chosen]
        for victim in idle:
            if victim is not None:
                self._teardown(victim)

    @staticmethod
    def _choose_until(
        budget: int, counted: list[_Entry], candidates: list[_Entry], pending: int, chosen: list[_Entry]
    ) -> None:
        """Add candidates to `chosen`, least recently used first, until `counted` (less what is chosen)
        and `pending` bytes fit `budget` (pool lock held)."""
        total = sum(e.cost_bytes for e in counted if e not in chosen) + pending
        for entry in candidates:
            if total <= budget:
                return
            if entry not in chosen:
                chosen.append(entry)
                total -= entry.cost_bytes

    @contextmanager
    def pinned(self, key: Key) -> Iterator[None]:
        """Keep `key` loaded meanwhile, even past the bounds (a version switch needs both loaded)."""
        with self._lock:
            self._pinned.add(key)
        try:
            yield
        finally:
            with self._lock:
                self._pinned.discard(key)

    def trim(self, keep: Key) -> None:
        """Enforce the bounds again, evicting others than `keep` (after a pin is released)."""
        self._make_room(keep, 0)

    def evict(self, key: Key, reason: str = "requested") -> bool:
        """Unload one instance (after its in-flight requests finish). False if it was not loaded."""
        with self._lock:
            entry = self._entries.get(key)
            idle = self._retire(entry, reason) if entry is not None else None
        if idle is not None:
            self._teardown(idle)
        return entry is not None

    def evict_model(self, name: str, reason: str = "requested") -> int:
        keys = [key for key in self.loaded() if key[0] == name]
        return sum(self.evict(key, reason) for key in keys)

    def _retire(self, entry: _Entry, reason: str) -> _Entry | None:
        """Take an entry out of service (pool lock held); return it if it can be torn down now."""
        del self._entries[entry.key]
        self._stats.evictions += 1
        logger.info("evicting %s:%s (%s)", *entry.key, reason)
        if entry.in_flight == 0:
            return entry
        entry.retiring = True
        self._retiring.append(entry)
        return None

    def _teardown(self, entry: _Entry) -> None:
        try:
            entry.runner.close()
        except Exception:
            logger.exception("teardown of %s:%s failed", *entry.key)
        release_freed_memory()

    def is_loaded(self, key: Key) -> bool:
        with self._lock:
            return key in self._entries

    def loaded(self) -> list[Key]:
        with self._lock:
            return list(self._entries)

    def stats(self) -> PoolStats:
        with self._lock:
            live = [*self._entries.values(), *self._retiring]
            return PoolStats(
                loads=self._stats.loads,
                load_failures=self._stats.load_failures,
                evictions=self._stats.evictions,
                load_seconds=self._stats.load_seconds,
                loaded=list(self._entries),
                memory_bytes=sum(e.cost_bytes for e in live),
                costs={key: entry.cost_bytes for key, entry in self._entries.items()},
            )

    def close(self) -> None:
        """Unload everything (server shutdown)."""
        for key in self.loaded():
            self.evict(key, "shutdown")


class _HeldIfLoaded:
    """`ModelPool.use_if_loaded`: the entry acquired on entering, released on leaving."""

    __slots__ = ("entry", "key", "pool")

    def __init__(self, pool: ModelPool, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.entry: _Entry | None = None

    def __enter__(self) -> Any | None:
        self.entry = self.pool._acquire(self.key)
        return None if self.entry is None else self.entry.runner

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        if self.entry is not None:
            self.pool._release(self.entry, off_thread=True)
