"""MiniLM's sentence embeddings over OpenAI's `/v1/embeddings` vs modelpod's native route, on one
server, at 32 requests in flight (wrk): what the OpenAI shape costs on the same batched model.

    python benchmarks/openai_embeddings.py [--seconds 5] [--concurrency 32] [--rounds 3]

One sentence per request on both routes; the native route answers the vector as a list, `/v1` as
OpenAI's `{"data": [{"embedding": [...]}], "usage": ...}` (float encoding), tokens counted. The two
routes alternate `--rounds` times (the machine is shared: its load changes between points), and each
point also reports the server process's CPU time per request (user + system, from /proc), which
other work on the machine disturbs less than throughput. `--fast` serves `FastVectors` instead (a
fixed vector, no compute): the routes' own CPU per request, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import servers
import wrk_load
from inprocess import SENTENCE


def routes(model: str) -> dict[str, tuple[str, dict[str, str]]]:
    return {
        "native": (f"/models/{model}/predict", {"text": SENTENCE}),
        "/v1": ("/v1/embeddings", {"model": model, "input": SENTENCE}),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--fast", action="store_true", help="a model without compute (FastVectors): the routes' own cost"
    )
    options = parser.parse_args()
    model = "fastvectors" if options.fast else "minilm"
    print("| round | route | req/s | p50 ms | p99 ms | errors | server CPU ms/request | x native req/s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with TemporaryDirectory(prefix="modelpod-embeddings-") as folder:
        work = Path(folder)
        (work / "logs").mkdir()
        server = servers.modelpod(
            work / "logs",
            work / "data",
            [f"benchmarks/models.py:{'FastVectors' if options.fast else 'MiniLM'}"],
        )
        with servers.running(server, "/v2/health/ready"):
            for round_number in range(1, options.rounds + 1):
                native = 0.0
                for label, (path, body) in routes(model).items():
                    before = cpu_seconds(server.process.pid)
                    measured = wrk_load.run_wrk(
                        server.url + path, json.dumps(body).encode(), options.concurrency, options.seconds
                    )
                    spent = cpu_seconds(server.process.pid) - before  # warm-up included: both alike
                    requests = measured.throughput * (options.seconds + 1)  # the warm-up's second too
                    per_request = spent / max(requests, 1) * 1000
                    native = native or measured.throughput
                    print(
                        f"| {round_number} | {label} | {measured.throughput:,.0f} | {measured.p50_ms:.1f} | "
                        f"{measured.p99_ms:.1f} | {measured.errors} | {per_request:.2f} | "
                        f"{measured.throughput / native:.2f}x |",
                        flush=True,
                    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
