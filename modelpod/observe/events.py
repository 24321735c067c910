"""What the serving core tells whoever records it: a request answered, a batch run, a training job's
state. The service publishes each event once, to its `Recorders`; each `Recorder` (Prometheus, the
statistics extension, the status page's activity) keeps what it needs of it.

A new recorder subclasses `Recorder`, overrides the hooks it cares about, and is handed to the
service (`InferenceService(..., recorders=[...])`). Hooks run on the thread that saw the event (the
event loop, a batcher's thread, a training job's thread): they must be quick and thread-safe.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelpod.observe.item_tape import ItemTape

logger = logging.getLogger("modelpod.observe")

# The span of the request this context serves, set by an edge when tracing is on (None when off).
# Opaque to the core: it only hands it on, in the events, to whichever recorder knows what it is.
request_trace: ContextVar[object | None] = ContextVar("modelpod_request_trace", default=None)


class RequestSpan(Protocol):
    """A request's span as an edge holds it: ended once, with the status the client got."""

    def finish(self, status: str, error_id: str = "") -> None: ...


class SpanStarter(Protocol):
    """Starts a request's span at an edge, continuing the caller's trace from its headers or
    metadata (`carrier`), and makes it the context's `request_trace`."""

    def start(self, carrier: Mapping[str, str], name: str, attributes: Mapping[str, str]) -> RequestSpan: ...

    def child(self, name: str, attributes: Mapping[str, str]) -> RequestSpan:
        """A span within the context's `request_trace` (a request inside a stream), made the
        context's `request_trace` until it finishes."""
        ...


@dataclass(frozen=True, slots=True)
class RequestDone:
    """A request answered, or a stream ended."""

    model: str
    version: str
    protocol: str  # the edge it came through: http, grpc, v2..., pipeline, python
    outcome: str  # "ok"; "cancelled" (a stream its client left); an error's snake name; "error"
    seconds: float
    message: str = ""  # what the client was told of its error, never more
    items: int | None = None  # how many items a stream sent; None for a request with one answer
    trace: object | None = None  # the request's span (`request_trace`), when tracing is on
    # The model's calls and their answers (None for an error), given only while some recorder
    # `wants_payloads` (payload capture): references, never copies, so they cost nothing.
    inputs: Sequence[Any] | None = None
    outputs: Sequence[Any] | None = None
    # A stream's items as kept for payloads (its `outputs` are then `[tape.items]`): how many it
    # sent, whether all are kept, whether its caller closed it early.
    tape: ItemTape | None = None

    @property
    def served(self) -> bool:
        """Answered as asked: a client that stops reading a stream is no failure of the server."""
        return self.outcome in ("ok", "cancelled")


@dataclass(frozen=True, slots=True)
class BatchDone:
    """One run of a model: a batch of rows, or one request's call for a model that does not batch."""

    model: str
    version: str
    rows: int
    compute: float  # seconds the call took
    waits: Sequence[float]  # seconds each request of it waited
    traces: Sequence[object | None] = ()  # each request's span, beside its wait (when tracing is on)
    worker: float | None = None  # seconds the worker process took, for a model in worker processes


@dataclass(frozen=True, slots=True)
class RouteChosen:
    """A router sent a request on to one of its models."""

    router: str
    version: str
    target: str
    seconds: float  # the router's choosing
    trace: object | None = None  # the request's span (`request_trace`), when tracing is on


@dataclass(frozen=True, slots=True)
class StepDone:
    """One step of a version's running batch (token-level batching): every running sequence one
    token further. Sequences that left the batch since the last step are counted by why."""

    model: str
    version: str
    sequences: int  # sequences stepped
    tokens: int  # tokens made (a sequence that ended made none)
    compute: float  # seconds the step took
    first_token_waits: Sequence[
        float
    ] = ()  # for sequences that made their first token: seconds since arrival
    retired: Mapping[str, int] = field(default_factory=dict)  # "ended", "closed", "failed" -> count


@dataclass(frozen=True, slots=True)
class TrainingChanged:
    """A training job started (state "running") or ended (its final state)."""

    model: str
    version: str
    state: str


@dataclass(frozen=True, slots=True)
class ShadowDone:
    """A request also sent to a shadow version, after its caller was answered: how that went."""

    model: str
    version: str  # the shadow version
    outcome: str  # "compared"; "error" (the shadow failed); "shed" (skipped under load)
    agreement: Mapping[str, bool] = field(default_factory=dict)  # per output: shadow agreed?
    latency_difference: float | None = None  # shadow seconds minus served seconds
    seconds: float | None = None  # the shadow's own time


@dataclass(frozen=True, slots=True)
class RolloutDecided:
    """A rollout's rule moved its candidate version: stepped its share up, promoted it to the
    default, or rolled it back; `numbers` are what the decision was made on."""

    model: str
    version: str  # the candidate
    decision: str  # "step", "promote", "rollback"
    reason: str
    numbers: Mapping[str, object] = field(default_factory=dict)
    share: float | None = None  # the candidate's percent of the traffic after the decision


@dataclass(frozen=True, slots=True)
class QuotaRefused:
    """A request refused before it ran: its caller was over a quota."""

    caller: str  # the API key's name, "traffic-key" or "anonymous": never a key, nor a traffic key's value
    model: str  # "" when the quota is the caller's over all models
    limit: str  # "rate" or "concurrency"


class Recorder:
    """Told of what the serving core does; every hook does nothing until a subclass overrides it."""

    wants_payloads = False  # True: `RequestDone` carries the request's inputs and outputs
    stream_budget: int | None = None  # bytes of a stream's items kept for payloads (None: the default)

    def on_request(self, event: RequestDone) -> None:
        return None

    def on_batch(self, event: BatchDone) -> None:
        return None

    def on_step(self, event: StepDone) -> None:
        return None

    def on_training(self, event: TrainingChanged) -> None:
        return None

    def on_route(self, event: RouteChosen) -> None:
        return None

    def on_shadow(self, event: ShadowDone) -> None:
        return None

    def on_rollout(self, event: RolloutDecided) -> None:
        return None

    def on_quota(self, event: QuotaRefused) -> None:
        return None


class Recorders(Recorder):
    """Every recorder of one service, told in turn. One that fails is logged, never the request's
    failure: what the server records must not change what it answers."""

    def __init__(self, recorders: Iterable[Recorder]) -> None:
        self.all = tuple(recorders)
        self.wants_payloads = any(recorder.wants_payloads for recorder in self.all)
        budgets = [recorder.stream_budget for recorder in self.all if recorder.wants_payloads]
        self.stream_budget = None if None in budgets or not budgets else max(b or 0 for b in budgets)

    def on_request(self, event: RequestDone) -> None:
        for recorder in self.all:
            try:
                recorder.on_request(event)
            except Exception:
                logger.exception("%s failed to record a request", type(recorder).__name__)

    def on_batch(self, event: BatchDone) -> None:
        for recorder in self.all:
            try:
                recorder.on_batch(event)
            except Exception:
                logger.exception("%s failed to record a batch", type(recorder).__name__)

    def on_step(self, event: StepDone) -> None:
        for recorder in self.all:
            try:
                recorder.on_step(event)
            except Exception:
                logger.exception("%s failed to record a step", type(recorder).__name__)

    def on_training(self, event: TrainingChanged) -> None:
        for recorder in self.all:
            try:
                recorder.on_training(event)
            except Exception:
                logger.exception("%s failed to record a training job", type(recorder).__name__)

    def on_route(self, event: RouteChosen) -> None:
        for recorder in self.all:
            try:
                recorder.on_route(event)
            except Exception:
                logger.exception("%s failed to record a route", type(recorder).__name__)

    def on_shadow(self, event: ShadowDone) -> None:
        for recorder in self.all:
            try:
                recorder.on_shadow(event)
            except Exception:
                logger.exception("%s failed to record a shadow request", type(recorder).__name__)

    def on_rollout(self, event: RolloutDecided) -> None:
        for recorder in self.all:
            try:
                recorder.on_rollout(event)
            except Exception:
                logger.exception("%s failed to record a rollout decision", type(recorder).__name__)

    def on_quota(self, event: QuotaRefused) -> None:
        for recorder in self.all:
            try:
                recorder.on_quota(event)
            except Exception:
                logger.exception("%s failed to record a quota refusal", type(recorder).__name__)
