"""MLServer serving the benchmark MLP (`mlserver_runtime.MLPRuntime`) over V2 HTTP and gRPC.

    benchmarks/.venv-mlserver/bin/python benchmarks/peers/mlserver_server.py \
        --http-port 8080 --grpc-port 8081 --metrics-port 8082 --repository /tmp/x [--batch 32]

Writes the two files a user writes (`settings.json`, `mlp/model-settings.json`) into the new
folder `--repository` and runs `mlserver start` on it. `--batch 32` turns on MLServer's adaptive batching
(`max_batch_size` 32, `max_batch_time` `--delay-s`); `--batch 0` leaves it off. `parallel_workers` is
0 (inference on the server's event loop): on 2 cores it measured faster than MLServer's default of
one worker process (gRPC 678-750 against 571-585 req/s at c64 with batching, HTTP alike), and the
suite compares against each peer's faster setting. Everything else is MLServer's default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def write_repository(folder: Path, options: argparse.Namespace) -> None:
    settings = {
        "host": "127.0.0.1",
        "http_port": options.http_port,
        "grpc_port": options.grpc_port,
        "metrics_port": options.metrics_port,
        "parallel_workers": options.parallel_workers,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model: dict[str, object] = {"name": "mlp", "implementation": "mlserver_runtime.MLPRuntime"}
    if options.batch > 0:
        model |= {"max_batch_size": options.batch, "max_batch_time": options.delay_s}
    (folder / "mlp").mkdir()
    (folder / "mlp" / "model-settings.json").write_text(json.dumps(model))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--batch", type=int, default=0, help="max_batch_size (0: no adaptive batching)")
    parser.add_argument("--parallel-workers", type=int, default=0, help="0: inference in the server")
    parser.add_argument("--repository", type=Path, required=True, help="a folder to create")
    parser.add_argument("--delay-s", type=float, default=0.002, help="max_batch_time in seconds")
    options = parser.parse_args()
    folder = options.repository.resolve()
    folder.mkdir(parents=True)
    write_repository(folder, options)
    os.chdir(folder)  # MLServer keeps its metrics and environments folders in the working directory
    mlserver_cli = Path(sys.executable).with_name("mlserver")
    os.execv(mlserver_cli, [str(mlserver_cli), "start", str(folder)])


if __name__ == "__main__":
    main()
