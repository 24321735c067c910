"""The plain-FastAPI baseline for generation: the tiny GPT-2 streamed per request, no batching.

    python benchmarks/peers/fastapi_generate.py --port 8002 --data-path DIR --model-path DIR/tiny-gpt2

POST /v1/completions {"prompt", "max_tokens", "temperature", "top_p", "seed", "stream"} answers
server-sent events in OpenAI's completion chunk shape, ending with `data: [DONE]` (always streamed:
the benchmark's client only streams); GET /health.

What people write: a `def` endpoint returning a StreamingResponse over a generator, which Starlette
advances on its thread pool. The generator loops the example model's own per-request generation
(`TinyGPT2.predict`, i.e. `steps.alone`: prefill, then one token per forward pass), so the arithmetic
is the same as modelpod's per-request path; only the serving around it differs. `openai_load.py`
starts it with one BLAS/torch thread, like every server it measures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_gpt2.py"


class Completion(BaseModel):
    model: str = "gpt2"
    prompt: str
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = True


def load_model(data_path: Path, model_path: Path) -> Any:
    """The example's TinyGPT2 object, set up as the server sets it up (torch on one thread)."""
    spec = importlib.util.spec_from_file_location("tiny_gpt2_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    model = module.TinyGPT2(data_path=data_path, model_path=str(model_path), threads=1)
    model.setup()
    return model


def _event(name: str, model: str, text: str, finish_reason: str | None) -> str:
    chunk = {
        "id": name, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
    }  # fmt: skip
    return f"data: {json.dumps(chunk)}\n\n"


def events(model: Any, lock: threading.Lock, body: Completion) -> Iterator[str]:
    """One request's stream: each piece of the model's own generation as an OpenAI chunk."""
    name = f"cmpl-{uuid.uuid4().hex}"
    pieces: Iterator[str] = model.predict(
        prompt=body.prompt, max_tokens=body.max_tokens, temperature=body.temperature,
        top_p=body.top_p, seed=body.seed,
    )  # fmt: skip
    made = 0
    while True:
        # One piece at a time under the lock: the fast tokenizer refuses two threads at once, and
        # one computing thread is what every server here gets (torch on one thread).
        with lock:
            piece = next(pieces, None)
        if piece is None:
            break
        made += 1
        yield _event(name, body.model, piece, None)
    yield _event(name, body.model, "", "length" if made >= body.max_tokens else "stop")
    yield "data: [DONE]\n\n"


def create_app(model: Any) -> FastAPI:
    app = FastAPI()
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    def completions(body: Completion) -> StreamingResponse:
        return StreamingResponse(events(model, lock, body), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-path", type=Path, required=True, help="the model's data folder")
    parser.add_argument("--model-path", type=Path, required=True, help="the built tiny GPT-2 folder")
    options = parser.parse_args()
    app = create_app(load_model(options.data_path, options.model_path))
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
