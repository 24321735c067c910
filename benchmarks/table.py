"""The results table: one row per load point, each against the strongest peer on its own path.

A row's peers are the other servers measured on the same workload, transport and concurrency
(modelpod's native JSON route against FastAPI's and LitServe's JSON routes, its V2 routes against
MLServer's and Triton's, ...). The "x best peer" column names the strongest of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from measurement import Measurement

MODELPOD = "modelpod"
MODELPOD_KEYWORD = "modelpod (keyword model)"
MODELPOD_ASYNC = "modelpod (async def predict)"
IN_PROCESS = "in-process"
FASTAPI_SYNC = "FastAPI sync def"
FASTAPI_ASYNC = "FastAPI async def"
LITSERVE = "LitServe"
LITSERVE_BATCH = "LitServe (batching)"
MLSERVER = "MLServer"
MLSERVER_BATCH = "MLServer (adaptive batching)"
TRITON = "Triton (PyTriton)"
TRITON_BATCH = "Triton (PyTriton, batching)"

DIRECT = "direct call"
HTTP_JSON = "HTTP JSON"
V2_JSON = "HTTP V2 JSON"
V2_BINARY = "HTTP V2 binary"
GRPC_NATIVE = "gRPC native"
GRPC_V2 = "gRPC V2"

WORKLOADS = ["MLP", "Echo", "MiniLM", "64 MiB tensor"]
SERVERS = [
    IN_PROCESS,
    MODELPOD,
    MODELPOD_KEYWORD,
    MODELPOD_ASYNC,
    FASTAPI_SYNC,
    FASTAPI_ASYNC,
    LITSERVE,
    LITSERVE_BATCH,
]
SERVERS += [MLSERVER, MLSERVER_BATCH, TRITON, TRITON_BATCH]
TRANSPORTS = [DIRECT, HTTP_JSON, V2_JSON, V2_BINARY, GRPC_NATIVE, GRPC_V2]


@dataclass(frozen=True)
class Row:
    workload: str  # one of WORKLOADS
    server: str  # one of SERVERS
    transport: str  # one of TRANSPORTS
    concurrency: int  # requests in flight; for IN_PROCESS rows, the batch size
    result: Measurement | None  # None: not measured, `note` says why
    note: str = ""

    @property
    def load(self) -> str:
        return f"batch {self.concurrency}" if self.server == IN_PROCESS else f"c{self.concurrency}"

    @property
    def throughput(self) -> float:
        return self.result.throughput if self.result is not None else 0.0

    @property
    def is_peer(self) -> bool:
        return not self.server.startswith(MODELPOD) and self.server != IN_PROCESS


def sort_key(row: Row) -> tuple[int, int, int, int]:
    """Workload, then each load point (transport, concurrency) with modelpod first and its peers below."""
    return (
        WORKLOADS.index(row.workload),
        TRANSPORTS.index(row.transport),
        row.concurrency,
        SERVERS.index(row.server),
    )


def find(rows: Sequence[Row], workload: str, server: str, transport: str, concurrency: int) -> Row | None:
    for row in rows:
        if (row.workload, row.server, row.transport, row.concurrency) == (
            workload,
            server,
            transport,
            concurrency,
        ):
            return row
    return None


def best_of(rows: Sequence[Row], servers: Sequence[str], workload: str, transport: str, c: int) -> Row | None:
    """The highest throughput among `servers` on one point; None when none of them measured it."""
    found = [row for s in servers if (row := find(rows, workload, s, transport, c)) and row.throughput > 0]
    return max(found, key=lambda r: r.throughput, default=None)


def best_peer(rows: Sequence[Row], row: Row) -> Row | None:
    """The strongest peer on the row's workload, transport and concurrency (itself, for the best peer)."""
    if row.server == IN_PROCESS:
        return None
    peers = [r.server for r in rows if r.is_peer]
    return best_of(rows, peers, row.workload, row.transport, row.concurrency)


def ceiling(rows: Sequence[Row], row: Row) -> Row | None:
    """The model called directly: batch 1 for one request in flight, else the largest batch measured."""
    if row.server == IN_PROCESS:
        return None
    direct = [r for r in rows if r.workload == row.workload and r.server == IN_PROCESS and r.throughput > 0]
    if row.concurrency == 1:
        return next((r for r in direct if r.concurrency == 1), None)
    return max(direct, key=lambda r: r.concurrency, default=None)


def ratio(row: Row, base: Row | None, named: bool = False) -> str:
    if base is None or base.throughput <= 0 or row.result is None or row.result.unit == "GB/s":
        return "—"
    text = f"{row.throughput / base.throughput:.2f}x"
    return f"{text} ({base.server})" if named else text


# -- rendering ---------------------------------------------------------------------------------

Check = Callable[[Sequence[Row], Row], str | None]


def _throughput(row: Row) -> str:
    if row.result is None:
        return row.note
    if row.result.unit == "GB/s":
        return f"{row.result.throughput:.2f} GB/s"
    return f"{row.result.throughput:,.0f} {row.result.unit}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def render(rows: Sequence[Row], checks: Sequence[Check]) -> str:
    lines = [
        "| workload | server | transport | load | throughput | p50 ms | p99 ms | errors "
        "| x best peer (which) | x in-process | target |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in sorted(rows, key=sort_key):
        verdicts = [text for check in checks if (text := check(rows, row))]
        result = row.result
        cells = [
            row.workload,
            row.server,
            row.transport,
            row.load,
            _throughput(row),
            _ms(result.p50_ms if result else None),
            _ms(result.p99_ms if result else None),
            str(result.errors) if result else "—",
            ratio(row, best_peer(rows, row), named=True),
            ratio(row, ceiling(rows, row)),
            "; ".join(verdicts),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
