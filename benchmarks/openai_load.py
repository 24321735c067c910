"""Token-level batching vs per-request streaming vs plain FastAPI, over /v1/completions, on the tiny GPT-2.

    python benchmarks/openai_load.py [--seconds 4] [--tokens 32] [--concurrency 1 8 32]

One `modelpod serve` serves the tiny GPT-2 of examples/tiny_gpt2.py twice: `gpt2` takes steps (one
running batch, every sequence one token further per forward pass) and `gpt2-per-request` (below) is
the same model without the step contract, each request generating alone on a model thread. The third
mode is a plain FastAPI app (benchmarks/peers/fastapi_generate.py) streaming the same model object's
own per-request generation as server-sent events. Every server runs torch and BLAS on one thread.
At each concurrency, that many clients stream completions of `--tokens` tokens back to back for
`--seconds` per mode, with the same client, prompt and seeds; reported: aggregate tokens/s and time to
first token (p50, p99). About 60 s in all with the defaults. LitServe's OpenAISpec is reported as not
measured, with the reason, while its environment lacks torch and transformers.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import servers

from modelpod import STREAM_END

ROOT = Path(__file__).resolve().parents[1]


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("tiny_gpt2_example", ROOT / "examples" / "tiny_gpt2.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tiny_gpt2 = _example()


class PerRequestGPT2(tiny_gpt2.TinyGPT2):  # type: ignore[misc,name-defined]
    """The same model without the step contract: the server streams each request on its own."""

    name = "gpt2-per-request"
    start_sequence = None  # not callable: no running batch for this one
    step_sequences = None

    def predict(
        self,
        prompt: str,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[str]:
        model = tiny_gpt2.TinyGPT2
        sequence = model.start_sequence(self, prompt, max_tokens, temperature, top_p, seed)
        while (piece := model.step_sequences(self, [sequence])[0]) is not STREAM_END:
            yield piece


async def _one(client: httpx.AsyncClient, model: str, tokens: int, seed: int) -> tuple[float, int]:
    """One streamed completion: seconds to its first token, and its tokens."""
    body = {"model": model, "prompt": "The river", "max_tokens": tokens, "seed": seed, "stream": True}
    started, first, count = time.perf_counter(), 0.0, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            if choice["text"]:
                count += 1
                if count == 1:
                    first = time.perf_counter() - started
    return first, count


async def _point(url: str, model: str, concurrency: int, seconds: float, tokens: int) -> dict[str, Any]:
    firsts: list[float] = []
    made = 0
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker(number: int) -> None:
            nonlocal made
            seed = number * 1000
            while time.perf_counter() < deadline:
                first, count = await _one(client, model, tokens, seed)
                firsts.append(first)
                made += count
                seed += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(number) for number in range(concurrency)))
        elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(firsts, [50, 99]) * 1000
    return {
        "model": model, "concurrency": concurrency, "requests": len(firsts),
        "tokens_per_s": made / elapsed, "ttft_p50_ms": float(p50), "ttft_p99_ms": float(p99),
    }  # fmt: skip


def _litserve_note() -> str:
    """Why LitServe's OpenAISpec is not in the table: its environment, or the missing peer script."""
    try:
        python = servers.peer_python("litserve")
    except RuntimeError as error:
        return f"LitServe OpenAISpec: not measured: {error}"
    probe = "import importlib.util as u; print(*(m for m in ('torch', 'transformers') if not u.find_spec(m)))"
    missing = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    if missing.returncode != 0 or missing.stdout.strip():
        lacks = ", ".join(missing.stdout.split()) or "a working interpreter"
        return (
            f"LitServe OpenAISpec: not measured: benchmarks/.venv-litserve lacks {lacks} for the tiny "
            "GPT-2 (too heavy to install beside this run)"
        )
    return "LitServe OpenAISpec: not measured: no OpenAISpec peer script in benchmarks/peers yet"


MODES = {  # label: (which server, model name)
    "token-level batching": ("modelpod", "gpt2"),
    "per-request streaming": ("modelpod", "gpt2-per-request"),
    "plain FastAPI": ("fastapi", "gpt2"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per point")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each completion")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--json", action="store_true", help="one JSON line per point instead of a table")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data, logs = Path(folder) / "data", Path(folder) / "logs"
        logs.mkdir()
        built = tiny_gpt2.build(data / "tiny-gpt2")
        for model in (tiny_gpt2.TinyGPT2, PerRequestGPT2):
            model(data_path=data).initialize(model_path=str(built))
        peer = servers.fastapi_generate(logs, data, built)  # loads while modelpod starts
        try:
            served = [
                f"{ROOT / 'examples' / 'tiny_gpt2.py'}:TinyGPT2",
                f"{Path(__file__).resolve()}:PerRequestGPT2",
            ]
            pod = servers.modelpod(logs, data, served)
            with servers.running(pod, "/v2/health/ready"), servers.running(peer, "/health"):
                _measure({"modelpod": pod.url, "fastapi": peer.url}, options)
        finally:
            peer.stop()  # idempotent: also when modelpod never started
    note = _litserve_note()
    print(
        json.dumps({"mode": "litserve-openaispec", "measured": False, "note": note}) if options.json else note
    )


def _measure(urls: dict[str, str], options: argparse.Namespace) -> None:
    if not options.json:
        print(f"{'mode':<22}{'clients':>8}{'requests':>10}{'tokens/s':>10}{'TTFT p50':>10}{'p99 ms':>8}")
    for concurrency in options.concurrency:  # the modes side by side: they share the machine's load
        for mode, (server, model) in MODES.items():
            point = asyncio.run(_point(urls[server], model, concurrency, options.seconds, options.tokens))
            _show({"mode": mode, **point}, options.json)


def _show(point: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(point), flush=True)
        return
    print(
        f"{point['mode']:<22}{point['concurrency']:>8}{point['requests']:>10}{point['tokens_per_s']:>10.0f}"
        f"{point['ttft_p50_ms']:>10.0f}{point['ttft_p99_ms']:>8.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
