"""What a replay found: per output, how often the version replayed agreed with what was answered when
the request was captured (`serving.agreement`: exact for labels and bytes, floats within a
tolerance); the latencies of both; the requests that disagreed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelpod.serving.agreement import agreement

SHOWN = 20  # disagreeing requests shown in the table (the JSON has them all)


@dataclass
class Report:
    """Tallies of one replay, fed a request at a time."""

    model: str
    against: str
    address: str
    agreed: Counter[str] = field(default_factory=Counter)  # output -> calls that agreed
    compared: Counter[str] = field(default_factory=Counter)  # output -> calls compared
    requests: int = 0  # replayed (sent, answered or failed)
    agreeing: int = 0  # requests whose every call agreed on every output
    errors: int = 0  # requests the version replayed failed
    skipped: Counter[str] = field(default_factory=Counter)  # why requests were not replayed
    captured_seconds: list[float] = field(default_factory=list)
    replayed_seconds: list[float] = field(default_factory=list)
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def failed(self, record: dict[str, Any], error: Exception) -> None:
        self.requests += 1
        self.errors += 1
        self.disagreements.append({"request_id": record.get("request_id"), "error": str(error)})

    def answered(
        self, record: dict[str, Any], recorded: Sequence[Any], answers: Sequence[Any], seconds: float
    ) -> None:
        """One request's answers now, beside those captured (one per model call)."""
        self.requests += 1
        self.captured_seconds.append(float(record.get("seconds") or 0.0))
        self.replayed_seconds.append(seconds)
        differing: set[str] = set()
        for then, now in zip(recorded, answers, strict=True):
            for output, agreed in agreement(then, now).items():
                self.compared[output] += 1
                self.agreed[output] += agreed
                if not agreed:
                    differing.add(output)
        if differing:
            self.disagreements.append({"request_id": record.get("request_id"), "outputs": sorted(differing)})
        else:
            self.agreeing += 1

    def document(self) -> dict[str, Any]:
        """The report as JSON's values (`--json`)."""
        answered = self.requests - self.errors
        captured, replayed = _percentiles(self.captured_seconds), _percentiles(self.replayed_seconds)
        return {
            "model": self.model,
            "against": self.against,
            "address": self.address,
            "requests": self.requests,
            "errors": self.errors,
            "skipped": dict(self.skipped),
            "agreement": self.agreeing / answered if answered else None,
            "outputs": {
                output: {
                    "agreed": self.agreed[output],
                    "compared": self.compared[output],
                    "agreement": self.agreed[output] / self.compared[output],
                }
                for output in sorted(self.compared)
            },
            "latency_seconds": {
                "captured": captured,
                "replayed": replayed,
                "difference": {k: replayed[k] - captured[k] for k in captured} if answered else None,
            },
            "disagreements": self.disagreements,
        }


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    p50, p99 = np.percentile(seconds, [50, 99])
    return {"p50": float(p50), "p99": float(p99)}


def render(document: dict[str, Any]) -> None:
    """The report as rich tables on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    overall = document["agreement"]
    console.print(
        f"replayed {document['requests']} requests of {document['model']} against version "
        f"{document['against']} at {document['address']}: "
        + ("no answers" if overall is None else f"{overall:.1%} agree on every output")
        + f", {document['errors']} failed"
        + "".join(f", {n} skipped ({why})" for why, n in document["skipped"].items())
    )
    outputs = Table("output", "agreed", "compared", "agreement")
    for name, tally in document["outputs"].items():
        outputs.add_row(name, str(tally["agreed"]), str(tally["compared"]), f"{tally['agreement']:.1%}")
    console.print(outputs)
    latency = Table("latency (ms)", "captured", "replayed", "difference")
    spans = document["latency_seconds"]
    for q in ("p50", "p99"):
        if spans["difference"] is not None:
            latency.add_row(q, *(f"{spans[k][q] * 1000:.2f}" for k in ("captured", "replayed", "difference")))
    console.print(latency)
    if document["disagreements"]:
        differing = Table("request id", "disagrees on")
        for row in document["disagreements"][:SHOWN]:
            differing.add_row(str(row["request_id"]), row.get("error") or ", ".join(row["outputs"]))
        console.print(differing)
        if len(document["disagreements"]) > SHOWN:
            console.print(f"... and {len(document['disagreements']) - SHOWN} more (--json lists them all)")
