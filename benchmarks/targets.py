"""Issue 19's targets, checked on the rows of one run: ✅ or ❌ in the row each one is about.

Each check looks at one modelpod row and the rows it is measured against; a target whose
baseline was not measured (a peer skipped, a server that did not start) says so instead of
passing.
"""

from __future__ import annotations

from collections.abc import Sequence

from table import (
    FASTAPI_ASYNC,
    FASTAPI_SYNC,
    GRPC_NATIVE,
    GRPC_V2,
    HTTP_JSON,
    MLSERVER,
    MLSERVER_BATCH,
    MODELPOD,
    MODELPOD_ASYNC,
    MODELPOD_KEYWORD,
    TRITON_BATCH,
    V2_BINARY,
    V2_JSON,
    Check,
    Row,
    best_of,
    ceiling,
    find,
)

FASTAPIS = (FASTAPI_SYNC, FASTAPI_ASYNC)


def _verdict(ok: bool, text: str) -> str:
    return f"{'✅' if ok else '❌'} {text}"


def _at_least(row: Row, base: Row | None, factor: float, name: str) -> str:
    if base is None:
        return f"— {name}: not measured"
    got = row.throughput / base.throughput
    return _verdict(got >= factor, f"≥{factor:g}x {name} ({got:.2f}x {base.server})")


def _is(row: Row, workload: str, transport: str, concurrency: int, server: str = MODELPOD) -> bool:
    return (row.workload, row.server, row.transport, row.concurrency) == (
        workload,
        server,
        transport,
        concurrency,
    )


def mlp_native_c64(rows: Sequence[Row], row: Row) -> str | None:
    if not _is(row, "MLP", HTTP_JSON, 64) or row.result is None:
        return None
    fastapi = best_of(rows, FASTAPIS, "MLP", HTTP_JSON, 64)
    p99 = row.result.p99_ms
    parts = [
        _at_least(row, fastapi, 3, "the faster FastAPI"),
        _verdict(p99 is not None and p99 <= 50, f"p99 ≤ 50 ms ({p99:.1f})" if p99 else "p99 ≤ 50 ms"),
        _at_least(row, ceiling(rows, row), 0.25, "in-process batch 32"),
    ]
    return "; ".join(parts)


def mlp_c1(rows: Sequence[Row], row: Row) -> str | None:
    if not _is(row, "MLP", HTTP_JSON, 1) or row.result is None or row.result.p50_ms is None:
        return None
    bases = [
        r for s in FASTAPIS if (r := find(rows, "MLP", s, HTTP_JSON, 1)) and r.result and r.result.p50_ms
    ]
    if not bases:
        return "— p50 ≤ the faster FastAPI's: not measured"
    base = min(bases, key=lambda r: r.result.p50_ms if r.result and r.result.p50_ms else 0.0)
    theirs = base.result.p50_ms if base.result and base.result.p50_ms else 0.0
    ok = row.result.p50_ms <= theirs
    return _verdict(
        ok, f"p50 ≤ the faster FastAPI's ({row.result.p50_ms:.2f} vs {theirs:.2f} ms, {base.server})"
    )


def echo_c64(rows: Sequence[Row], row: Row) -> str | None:
    if (
        not (_is(row, "Echo", HTTP_JSON, 64) or _is(row, "Echo", HTTP_JSON, 64, MODELPOD_ASYNC))
        or row.result is None
    ):
        return None
    return _at_least(row, best_of(rows, FASTAPIS, "Echo", HTTP_JSON, 64), 1.5, "the faster FastAPI")


def v2_json_c64(rows: Sequence[Row], row: Row) -> str | None:
    if not _is(row, "MLP", V2_JSON, 64) or row.result is None:
        return None
    mlserver = best_of(rows, (MLSERVER, MLSERVER_BATCH), "MLP", V2_JSON, 64)
    triton = find(rows, "MLP", TRITON_BATCH, V2_JSON, 64)
    triton = triton if triton is not None and triton.throughput > 0 else None
    return f"{_at_least(row, mlserver, 2, 'MLServer')}; {_at_least(row, triton, 1.5, 'Triton batching')}"


def v2_binary_c64(rows: Sequence[Row], row: Row) -> str | None:
    if not _is(row, "MLP", V2_BINARY, 64) or row.result is None:
        return None
    return _at_least(row, best_of(rows, (MODELPOD,), "MLP", HTTP_JSON, 64), 0.9, "native JSON")


def grpc_c64(rows: Sequence[Row], row: Row) -> str | None:
    """gRPC V2 against Triton's batched gRPC; either gRPC call no slower than modelpod's faster HTTP JSON."""
    if row.result is None or not (_is(row, "MLP", GRPC_V2, 64) or _is(row, "MLP", GRPC_NATIVE, 64)):
        return None
    http = [r for t in (HTTP_JSON, V2_JSON) if (r := find(rows, "MLP", MODELPOD, t, 64)) and r.throughput > 0]
    fastest_http = max(http, key=lambda r: r.throughput, default=None)
    parts = []
    if row.transport == GRPC_V2:
        triton = find(rows, "MLP", TRITON_BATCH, GRPC_V2, 64)
        parts.append(
            _at_least(row, triton if triton and triton.throughput > 0 else None, 1.5, "Triton batching")
        )
    label = f"HTTP {fastest_http.transport.removeprefix('HTTP ')}" if fastest_http else "HTTP"
    if fastest_http is None:
        parts.append("— ≥ modelpod's HTTP: not measured")
    else:
        got = row.throughput / fastest_http.throughput
        parts.append(_verdict(got >= 1.0, f"≥ modelpod's faster {label} ({got:.2f}x)"))
    return "; ".join(parts)


def keyword_c64(rows: Sequence[Row], row: Row) -> str | None:
    if not _is(row, "MLP", HTTP_JSON, 64, MODELPOD_KEYWORD) or row.result is None:
        return None
    return _at_least(row, best_of(rows, (MODELPOD,), "MLP", HTTP_JSON, 64), 0.9, "the tensor model")


def minilm_c32(rows: Sequence[Row], row: Row) -> str | None:
    if not _is(row, "MiniLM", HTTP_JSON, 32) or row.result is None:
        return None
    return _at_least(row, ceiling(rows, row), 0.9, "in-process batch 32")


def binary_64mib(rows: Sequence[Row], row: Row) -> str | None:
    if row.result is None or row.result.unit != "GB/s" or row.server != MODELPOD:
        return None
    return _verdict(row.result.throughput >= 1.0, "≥ 1 GB/s")


TARGETS: list[Check] = [
    mlp_native_c64,
    mlp_c1,
    echo_c64,
    v2_json_c64,
    v2_binary_c64,
    grpc_c64,
    keyword_c64,
    minilm_c32,
    binary_64mib,
]
