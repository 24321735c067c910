"""The results table: one row per load point, ratios to plain FastAPI and to the in-process
ceiling, and the issue's targets checked where they apply."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from measurement import Measurement

MODELPOD = "modelpod"
FASTAPI = "FastAPI"
IN_PROCESS = "in-process"
LITSERVE = "LitServe"
HTTP_JSON = "HTTP JSON"


@dataclass(frozen=True)
class Row:
    workload: str  # "MLP", "Echo", "MiniLM", "64 MiB tensor"
    server: str  # MODELPOD, FASTAPI, IN_PROCESS, "LitServe", "LitServe (batching)"
    transport: str  # HTTP_JSON, "gRPC native", "gRPC V2", "HTTP V2 binary", "direct call"
    concurrency: int  # requests in flight; for IN_PROCESS rows, the batch size
    result: Measurement

    @property
    def load(self) -> str:
        return f"batch {self.concurrency}" if self.server == IN_PROCESS else f"c{self.concurrency}"


def _find(rows: Sequence[Row], workload: str, server: str, concurrency: int | None = None) -> Row | None:
    for row in rows:
        same = (
            row.workload == workload and row.server == server and row.transport in (HTTP_JSON, "direct call")
        )
        if same and (concurrency is None or row.concurrency == concurrency):
            return row
    return None


def fastapi_baseline(rows: Sequence[Row], row: Row) -> Row | None:
    """Plain FastAPI, same workload, same concurrency."""
    if row.server == IN_PROCESS:
        return None
    return _find(rows, row.workload, FASTAPI, row.concurrency)


def ceiling(rows: Sequence[Row], row: Row) -> Row | None:
    """The model called directly: batch 1 for one request in flight, else the largest batch measured."""
    if row.server == IN_PROCESS:
        return None
    direct = [r for r in rows if r.workload == row.workload and r.server == IN_PROCESS]
    if not direct:
        return None
    if row.concurrency == 1:
        return next((r for r in direct if r.concurrency == 1), None)
    return max(direct, key=lambda r: r.concurrency)


def _ratio(row: Row, base: Row | None) -> str:
    if base is None or base.result.throughput <= 0 or row.result.unit == "GB/s":
        return "—"
    return f"{row.result.throughput / base.result.throughput:.2f}x"


# -- targets ------------------------------------------------------------------------------------

Check = Callable[[Sequence[Row], Row], str | None]


def _verdict(ok: bool, text: str) -> str:
    return f"{'✅' if ok else '❌'} {text}"


def _mlp_c64(rows: Sequence[Row], row: Row) -> str | None:
    if (row.workload, row.server, row.transport, row.concurrency) != ("MLP", MODELPOD, HTTP_JSON, 64):
        return None
    parts = []
    base = fastapi_baseline(rows, row)
    if base is not None and base.result.throughput > 0:
        ratio = row.result.throughput / base.result.throughput
        parts.append(_verdict(ratio >= 3, f"≥3x FastAPI ({ratio:.2f}x)"))
    p99 = row.result.p99_ms
    parts.append(
        _verdict(p99 is not None and p99 <= 50, f"p99 ≤ 50 ms ({p99:.1f})" if p99 else "p99 ≤ 50 ms")
    )
    litserve = [
        r for r in rows if r.workload == "MLP" and r.server.startswith(LITSERVE) and r.concurrency == 64
    ]
    if litserve and max(r.result.throughput for r in litserve) > 0:
        best = max(litserve, key=lambda r: r.result.throughput)
        ratio = row.result.throughput / best.result.throughput
        parts.append(_verdict(ratio >= 4, f"≥4x best LitServe ({ratio:.2f}x)"))
    return "; ".join(parts)


def _p50_no_worse(workload: str) -> Check:
    def check(rows: Sequence[Row], row: Row) -> str | None:
        if (row.workload, row.server, row.transport, row.concurrency) != (workload, MODELPOD, HTTP_JSON, 1):
            return None
        base = fastapi_baseline(rows, row)
        if base is None or base.result.p50_ms is None or row.result.p50_ms is None:
            return None
        ok = row.result.p50_ms <= base.result.p50_ms
        return _verdict(ok, f"p50 ≤ FastAPI's ({row.result.p50_ms:.2f} vs {base.result.p50_ms:.2f} ms)")

    return check


def _echo_c64(rows: Sequence[Row], row: Row) -> str | None:
    if (row.workload, row.server, row.transport, row.concurrency) != ("Echo", MODELPOD, HTTP_JSON, 64):
        return None
    base = fastapi_baseline(rows, row)
    if base is None or base.result.throughput <= 0:
        return None
    ratio = row.result.throughput / base.result.throughput
    return _verdict(ratio >= 1.5, f"≥1.5x FastAPI ({ratio:.2f}x)")


def _minilm_c32(rows: Sequence[Row], row: Row) -> str | None:
    if (row.workload, row.server, row.transport, row.concurrency) != ("MiniLM", MODELPOD, HTTP_JSON, 32):
        return None
    top = ceiling(rows, row)
    if top is None or top.result.throughput <= 0:
        return None
    ratio = row.result.throughput / top.result.throughput
    return _verdict(ratio >= 0.9, f"≥90% of in-process batch {top.concurrency} ({ratio:.0%})")


def _binary(rows: Sequence[Row], row: Row) -> str | None:
    if row.result.unit != "GB/s" or row.server != MODELPOD:
        return None
    return _verdict(row.result.throughput >= 1.0, "≥ 1 GB/s")


TARGETS: list[Check] = [
    _mlp_c64,
    _p50_no_worse("MLP"),
    _echo_c64,
    _minilm_c32,
    _p50_no_worse("MiniLM"),
    _binary,
]


# -- rendering ---------------------------------------------------------------------------------


def _throughput(result: Measurement) -> str:
    if result.unit == "GB/s":
        return f"{result.throughput:.2f} GB/s"
    return f"{result.throughput:,.0f} {result.unit}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def render(rows: Sequence[Row]) -> str:
    lines = [
        "| workload | server | transport | load | throughput | p50 ms | p99 ms | errors "
        "| x FastAPI | x in-process | target |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        verdicts = [text for check in TARGETS if (text := check(rows, row))]
        result = row.result
        cells = [
            row.workload,
            row.server,
            row.transport,
            row.load,
            _throughput(result),
            _ms(result.p50_ms),
            _ms(result.p99_ms),
            str(result.errors),
            _ratio(row, fastapi_baseline(rows, row)),
            _ratio(row, ceiling(rows, row)),
            "; ".join(verdicts),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
