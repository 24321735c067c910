"""Payload capture (`--capture` / `MODELPOD_CAPTURE`): a sampled share of each model's requests, and
every failed one if asked, kept with what the model was asked and what it answered.

A recorder: the service's `RequestDone` carries the request's model calls and their answers while a
capture is on. On the request's path the capture only draws the sample and puts a reference in a
bounded queue: when the queue is full the record is dropped and counted, and the request never
waits, nor wakes anyone: the writer thread wakes on its own every `WRITE_EVERY` seconds, or when
the queue is half full (a thread woken for every request costs the event loop a hand-off of the
interpreter lock each time, as much as the capture itself on a small virtual machine). It does the
rest: the model's `redact(inputs, outputs)` hook, the dropped
fields, the encoding (`capture_codec`) and the JSON lines (`capture_files`).

A record: `request_id`, `trace_id`, `model`, `version`, `protocol`, `time` (Unix seconds at the
answer), `seconds` (latency in the service), `outcome` ("ok" or the error's name), `error` (what
the client was told), `inputs` (one object per model call: a V2 request of many rows to a keyword
model is many calls) and `outputs` (the answer of each call; null for a failed request), and
`truncated` (how many values were over the size limit and left out). A streamed answer's record
has `outputs` `[[item, ...]]` (its items, the first ones until they add up to the size limit) and
`stream`: `{"items": sent, "kept": kept, "closed_by_caller": whether the caller ended it early (a
stop sequence)}`; the items left out count as truncated.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from modelpod.observe import logs
from modelpod.observe.capture_codec import Encoder, lightened
from modelpod.observe.events import Recorder, RequestDone
from modelpod.observe.item_tape import ItemTape

logger = logging.getLogger("modelpod.capture")

Redact = Callable[[Any, Any], tuple[Any, Any]]
EVERY_MODEL = "*"
WRITE_EVERY = 0.05  # seconds between the writer's rounds: what is captured is readable within it


@dataclass(frozen=True, slots=True)
class Sampling:
    """What share of a model's requests is captured, and whether every failed one is."""

    rate: float
    errors: bool = False


def parse_capture(text: str) -> dict[str, Sampling]:
    """`iris=0.1+errors;mlp=1;*=0.01` -> each model's sampling (`*`: every model not named).
    `MODEL=errors` captures only the failed requests."""
    policies: dict[str, Sampling] = {}
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        model, sep, rule = part.partition("=")
        rate_text, _, flag = rule.strip().partition("+")
        errors = flag.strip() == "errors" or rate_text.strip() == "errors"
        try:
            rate = 0.0 if rate_text.strip() == "errors" else float(rate_text)
        except ValueError:
            rate = -1.0
        if not sep or not model.strip() or not 0.0 <= rate <= 1.0 or (flag and flag.strip() != "errors"):
            raise ValueError(
                f"--capture {part!r}: expected MODEL=RATE[+errors] with RATE from 0 to 1 "
                "(or MODEL=errors), e.g. iris=0.1+errors;*=0.01"
            )
        policies[model.strip()] = Sampling(rate, errors)
    return policies


# A sampled request as it waits for the writer: model, version, protocol, outcome, seconds, message,
# stream tape, inputs, outputs, time of the answer, request id, trace id (a tuple: the cheapest to
# make on the request's path).
Sampled = tuple[
    str, str, str, str, float, str, ItemTape | None, list[Any], list[Any] | None, float, str | None, str
]


def _line(record: Mapping[str, Any], non_finite: bool) -> bytes:
    """A record as one JSON line: orjson's; the standard library's for what orjson refuses (an
    integer past 64 bits) or would change (it writes a NaN or an infinity as null; the standard
    library writes `NaN`, `Infinity`, which Python's reader, and so replay, gives back)."""
    if not non_finite:
        try:
            return orjson.dumps(record)
        except TypeError:
            pass
    return json.dumps(record, separators=(",", ":")).encode()


# A record, and its JSON line (UTF-8, without the newline).
Entry = tuple[Mapping[str, Any], bytes]


class Sink(Protocol):
    """Where records go, each with its JSON line: files (`capture_files.CaptureFiles`) or a
    database (`registry.captures.CaptureTable`). `write` takes a writer round's records, oldest
    first; what it is given is readable once `flush` returns."""

    def write(self, entries: Sequence[Entry]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class Capture(Recorder):
    """Samples requests on their path, writes them on a thread of its own."""

    wants_payloads = True

    def __init__(
        self,
        policies: Mapping[str, Sampling],
        sink: Sink,
        queue_size: int = 1000,
        max_value_bytes: int | None = 64 * 1024,
        drop_fields: Collection[str] = (),
        redactor: Callable[[str], Redact | None] = lambda model: None,
    ) -> None:
        self.policies = dict(policies)
        self.sink = sink
        self.max_value_bytes = max_value_bytes
        self.stream_budget = max_value_bytes  # a stream's items are kept up to the size limit, together
        self.drop_fields = frozenset(drop_fields)
        self.redactor = redactor
        self.queue_size = queue_size
        self._pending: collections.deque[Sampled] = collections.deque()  # (append and popleft are atomic)
        self._wake = threading.Event()
        self._stopping = False
        self._counts: dict[tuple[str, str], int] = {}  # (model, written|dropped|failed|truncated)
        self._lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_all, name="modelpod-capture", daemon=True)
        self._writer.start()

    # -- on the request's path: a draw and a put, never a wait ------------------------------------

    def on_request(self, event: RequestDone) -> None:
        if event.inputs is None:
            return  # nothing of the request was kept (a capture's recorder was not asked)
        policy = self.policies.get(event.model) or self.policies.get(EVERY_MODEL)
        if policy is None:
            return
        if not ((policy.errors and event.outcome != "ok") or random.random() < policy.rate):
            return
        pending = self._pending
        if len(pending) >= self.queue_size:
            self._add({(event.model, "dropped"): 1})
            return
        # What waits in the queue holds no value over the size limit (only its description), nor
        # the event (its span, its values at full size): the fields a record is made of, in a tuple.
        limit = self.max_value_bytes
        inputs = [lightened(call, limit) for call in event.inputs]
        outputs = None if event.outputs is None else [lightened(answer, limit) for answer in event.outputs]
        sampled: Sampled = (event.model, event.version, event.protocol, event.outcome, event.seconds,
                            event.message, event.tape, inputs, outputs, time.time(), logs.request_id.get(),
                            logs.trace_id_of(event.trace))  # fmt: skip
        pending.append(sampled)
        if len(pending) == self.queue_size // 2:
            self._wake.set()  # half full: write now rather than at the next round

    def _add(self, counts: Mapping[tuple[str, str], int]) -> None:
        with self._lock:
            for key, by in counts.items():
                self._counts[key] = self._counts.get(key, 0) + by

    def counts(self) -> dict[tuple[str, str], int]:
        """(model, "written" | "dropped" | "failed" | "truncated") -> how many so far."""
        with self._lock:
            return dict(self._counts)

    # -- on the writer's thread ------------------------------------------------------------------

    def _write_all(self) -> None:
        while True:
            self._wake.wait(WRITE_EVERY)
            self._wake.clear()
            stopping = self._stopping  # read before the last round: what came before it is written
            if self._pending:
                self._write_round()
            if stopping:
                break
        try:
            self.sink.close()
        except Exception:
            logger.exception("could not close the capture's destination")

    def _write_round(self) -> None:
        """What is queued, written together: one hand-over to the destination, flushed (what is
        captured is readable now), and the round's counts added under one lock. A destination that
        fails (a database gone away) loses the round: its records count as failed, not written."""
        pending = self._pending
        entries: list[Entry] = []
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        redactors: dict[str, Redact | None] = {}  # each model's hook, looked up once a round
        for _ in range(len(pending)):  # what came after the round began waits for the next one
            sampled = pending.popleft()
            model = sampled[0]
            if model not in redactors:
                redactors[model] = self.redactor(model)
            try:
                record, truncated, non_finite = self.record(sampled, redactors[model])
                entries.append((record, _line(record, non_finite)))
            except Exception:
                # Never written half-redacted: a failure drops the record, logged and counted.
                logger.exception("could not capture a request to %s:%s", model, sampled[1])
                counts[model, "failed"] += 1
                continue
            counts[model, "written"] += 1
            if truncated:
                counts[model, "truncated"] += truncated
        try:
            self.sink.write(entries)
            self.sink.flush()
        except Exception:  # a database gone away: the writer goes on, the next round may work
            logger.exception("could not write %d captured requests", len(entries))
            for key in [key for key in counts if key[1] == "written"]:
                counts[key[0], "failed"] += counts.pop(key)
        self._add(counts)

    def record(self, sampled: Sampled, redact: Redact | None) -> tuple[dict[str, Any], int, bool]:
        """The record of one sampled request (its calls and answers as sampled, through its model's
        `redact` hook if it has one), how many of its values were over the size limit, and whether
        it holds a float NaN or infinity."""
        (
            model,
            version,
            protocol,
            outcome,
            seconds,
            message,
            tape,
            calls,
            answers,
            at,
            request_id,
            trace_id,
        ) = sampled
        inputs, outputs = calls, answers
        if redact is not None or self.drop_fields:
            inputs = [self._trimmed(call) for call in calls]
            outputs = None if answers is None else [self._trimmed(answer) for answer in answers]
        if redact is not None:
            pairs = [redact(call, None if outputs is None else outputs[i]) for i, call in enumerate(inputs)]
            inputs = [call for call, _ in pairs]
            outputs = None if outputs is None else [answer for _, answer in pairs]
        encoder = Encoder(self.max_value_bytes)
        record = {
            "request_id": request_id,
            "trace_id": trace_id or None,
            "model": model,
            "version": version,
            "protocol": protocol,
            "time": at,
            "seconds": seconds,
            "outcome": outcome,
            "error": message or None,
            "inputs": encoder.encode(inputs),
            "outputs": None if outputs is None else encoder.encode(outputs),
        }
        truncated = encoder.truncated
        if tape is not None:  # a stream: its outputs are `[items]`, the first ones within the limit
            left_out = tape.count - len(tape.items)
            record["stream"] = {"items": tape.count, "kept": len(tape.items), "closed_by_caller": tape.closed}
            truncated += left_out
        record["truncated"] = truncated
        return record, truncated, encoder.non_finite

    def _trimmed(self, value: Any) -> Any:
        """A shallow copy for the redaction hook (the request may still be encoding its answer),
        without the fields to drop."""
        if isinstance(value, Mapping):
            return {key: item for key, item in value.items() if key not in self.drop_fields}
        return value

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer (at the server's stop)."""
        self._stopping = True
        self._wake.set()
        self._writer.join(timeout)
        if self._writer.is_alive():
            logger.warning("the capture's queue did not empty within %s s at shutdown", timeout)
