"""MiniLM's sentence embeddings over OpenAI's `/v1/embeddings` vs modelpod's native route, on one
server, at 32 requests in flight (wrk): what the OpenAI shape costs on the same batched model.

    python benchmarks/openai_embeddings.py [--seconds 5] [--concurrency 32]

One sentence per request on both routes; the native route answers the vector as a list, `/v1` as
OpenAI's `{"data": [{"embedding": [...]}], "usage": ...}` (float encoding), tokens counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import servers
import wrk_load
from inprocess import SENTENCE


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    options = parser.parse_args()
    routes = {
        "native /models/minilm/predict": ("/models/minilm/predict", {"text": SENTENCE}),
        "OpenAI /v1/embeddings": ("/v1/embeddings", {"model": "minilm", "input": SENTENCE}),
    }
    with TemporaryDirectory(prefix="modelpod-embeddings-") as folder:
        work = Path(folder)
        (work / "logs").mkdir()
        server = servers.modelpod(work / "logs", work / "data", ["benchmarks/models.py:MiniLM"])
        with servers.running(server, "/v2/health/ready"):
            results = {}
            for label, (path, body) in routes.items():
                measured = wrk_load.run_wrk(
                    server.url + path, json.dumps(body).encode(), options.concurrency, options.seconds
                )
                results[label] = measured
    native = results["native /models/minilm/predict"].throughput
    print("| route | c | req/s | p50 ms | p99 ms | errors | x native |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, measured in results.items():
        print(
            f"| {label} | {options.concurrency} | {measured.throughput:,.0f} | {measured.p50_ms:.1f} | "
            f"{measured.p99_ms:.1f} | {measured.errors} | {measured.throughput / native:.2f}x |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
