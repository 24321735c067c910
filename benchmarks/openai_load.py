"""Token-level batching vs per-request streaming vs plain FastAPI, over /v1/completions, on the tiny GPT-2.

    python benchmarks/openai_load.py [--seconds 4] [--tokens 32] [--concurrency 1 8 32]

One `modelpod serve` serves the tiny GPT-2 of examples/tiny_gpt2.py twice: `gpt2` takes steps (one
running batch, every sequence one token further per forward pass) and `gpt2-per-request` (below) is
the same model without the step contract, each request generating alone on a model thread. The third
mode is a plain FastAPI app (benchmarks/peers/fastapi_generate.py) streaming the same model object's
own per-request generation as server-sent events. Every server runs torch and BLAS on one thread.
At each concurrency, that many clients stream completions of `--tokens` tokens back to back for
`--seconds` per mode, with the same client, prompt and seeds; reported: aggregate tokens/s and time to
first token (p50, p99). About 60 s in all with the defaults. The fourth mode is LitServe's OpenAISpec
(benchmarks/peers/litserve_generate.py, in benchmarks/.venv-litserve with torch and transformers), asked
the same completion as a chat (its spec serves `/v1/chat/completions` only); without those in its
environment it is reported as not measured, with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
PROMPT = "The river"


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


def _request(model: str, tokens: int, seed: int, chat: bool) -> tuple[str, dict[str, Any]]:
    """The same completion as a prompt, or (LitServe's spec) as a chat whose last message is it."""
    body: dict[str, Any] = {"model": model, "max_tokens": tokens, "stream": True}
    if not chat:
        return "/v1/completions", {**body, "prompt": PROMPT, "seed": seed}
    asked = {"messages": [{"role": "user", "content": PROMPT}], "metadata": {"seed": str(seed)}}
    return "/v1/chat/completions", {**body, **asked}


async def _one(
    client: httpx.AsyncClient, model: str, tokens: int, seed: int, chat: bool = False
) -> tuple[float, int]:
    """One streamed completion: seconds to its first token, and its tokens."""
    path, body = _request(model, tokens, seed, chat)
    started, first, count = time.perf_counter(), 0.0, 0
    async with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            if choice.get("text") or (choice.get("delta") or {}).get("content"):
                count += 1
                if count == 1:
                    first = time.perf_counter() - started
    return first, count


async def _point(
    url: str, model: str, concurrency: int, seconds: float, tokens: int, chat: bool = False
) -> dict[str, Any]:
    firsts: list[float] = []
    made = 0
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker(number: int) -> None:
            nonlocal made
            seed = number * 1000
            while time.perf_counter() < deadline:
                first, count = await _one(client, model, tokens, seed, chat)
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


def _litserve_missing() -> str | None:
    """Why LitServe's OpenAISpec cannot be measured here, or None when its environment has what the
    tiny GPT-2 needs (run.sh makes it; torch as the CPU build, pinned)."""
    try:
        python = servers.peer_python("litserve")
    except RuntimeError as error:
        return str(error)
    probe = "import importlib.util as u; print(*(m for m in ('torch', 'transformers') if not u.find_spec(m)))"
    missing = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    if missing.returncode != 0 or missing.stdout.strip():
        lacks = ", ".join(missing.stdout.split()) or "a working interpreter"
        return f"benchmarks/.venv-litserve lacks {lacks} for the tiny GPT-2"
    return None


MODES = {  # label: (which server, model name, whether it is asked as a chat)
    "token-level batching": ("modelpod", "gpt2", False),
    "per-request streaming": ("modelpod", "gpt2-per-request", False),
    "plain FastAPI": ("fastapi", "gpt2", False),
    "LitServe OpenAISpec": ("litserve", "gpt2", True),  # its spec serves chat completions only
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per point")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each completion")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--json", action="store_true", help="one JSON line per point instead of a table")
    options = parser.parse_args()
    missing = _litserve_missing()
    with tempfile.TemporaryDirectory() as folder:
        data, logs = Path(folder) / "data", Path(folder) / "logs"
        logs.mkdir()
        built = tiny_gpt2.build(data / "tiny-gpt2")
        for model in (tiny_gpt2.TinyGPT2, PerRequestGPT2):
            model(data_path=data).initialize(model_path=str(built))
        peers = {"fastapi": (servers.fastapi_generate(logs, data, built), "/health")}  # load meanwhile
        if missing is None:
            peers["litserve"] = (servers.litserve_generate(logs, data, built), "/health")
        try:
            served = [
                f"{ROOT / 'examples' / 'tiny_gpt2.py'}:TinyGPT2",
                f"{Path(__file__).resolve()}:PerRequestGPT2",
            ]
            pod = servers.modelpod(logs, data, served)
            with contextlib.ExitStack() as stack:
                stack.enter_context(servers.running(pod, "/v2/health/ready"))
                for peer, ready in peers.values():
                    stack.enter_context(servers.running(peer, ready))
                urls = {"modelpod": pod.url, **{name: peer.url for name, (peer, _) in peers.items()}}
                _measure(urls, options)
        finally:
            for peer, _ in peers.values():
                peer.stop()  # idempotent: also when modelpod never started
    if missing is not None:
        note = f"LitServe OpenAISpec: not measured: {missing}"
        print(
            json.dumps({"mode": "LitServe OpenAISpec", "measured": False, "note": note})
            if options.json
            else note
        )


def _measure(urls: dict[str, str], options: argparse.Namespace) -> None:
    if not options.json:
        print(f"{'mode':<22}{'clients':>8}{'requests':>10}{'tokens/s':>10}{'TTFT p50':>10}{'p99 ms':>8}")
    for concurrency in options.concurrency:  # the modes side by side: they share the machine's load
        for mode, (server, model, chat) in MODES.items():
            if server not in urls:
                continue
            point = asyncio.run(
                _point(urls[server], model, concurrency, options.seconds, options.tokens, chat)
            )
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
