"""LitServe's OpenAI spec serving the tiny GPT-2: a LitAPI whose `predict` yields text, as its docs show.

    benchmarks/.venv-litserve/bin/python benchmarks/peers/litserve_generate.py --port 8003 \
        --data-path DIR --model-path DIR/tiny-gpt2

POST /v1/chat/completions (OpenAI's chat shape; LitServe's spec serves no /v1/completions): the last
message's content is the prompt, `max_tokens`, `temperature` and `top_p` as OpenAI names them, and
the seed in `metadata.seed` (LitServe's request model has no `seed` field). GET /health.

`predict` loops the example model's own per-request generation (`TinyGPT2.predict`: prefill, then one
token per forward pass), the same arithmetic as modelpod's per-request path and the FastAPI peer; the
model runs in LitServe's inference worker process, one request at a time (no batching: LitServe
batches a stream only when `predict` generates a whole batch itself). Runs in LitServe's own virtual
environment, with torch and transformers; `examples/tiny_gpt2.py` imports modelpod's model contract,
which needs numpy alone, from the repository root on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litserve as ls

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_gpt2.py"


class TinyGPT2API(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, data_path: Path, model_path: Path) -> None:
        super().__init__(spec=ls.OpenAISpec())  # streams: the spec says so
        self.data_path, self.model_path = data_path, model_path

    def setup(self, device: str) -> None:
        spec = importlib.util.spec_from_file_location("tiny_gpt2_example", EXAMPLE)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        self.model = module.TinyGPT2(data_path=self.data_path, model_path=str(self.model_path), threads=1)
        self.model.setup()

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        seed = (request.metadata or {}).get("seed")
        return {
            "prompt": request.messages[-1].content,
            "max_tokens": request.max_tokens or 16,
            "temperature": request.temperature if request.temperature is not None else 1.0,
            "top_p": request.top_p if request.top_p is not None else 1.0,
            "seed": int(seed) if seed is not None else None,
        }

    def predict(self, asked: dict[str, Any]) -> Iterator[str]:
        yield from self.model.predict(**asked)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-path", type=Path, required=True, help="the model's data folder")
    parser.add_argument("--model-path", type=Path, required=True, help="the built tiny GPT-2 folder")
    options = parser.parse_args()
    api = TinyGPT2API(options.data_path, options.model_path)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=options.port, host="127.0.0.1", log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
