"""Soak a real server: load near its capacity for a bounded time, with a fault every few seconds.

    python benchmarks/soak.py                     # 60 s at 80% of measured capacity, a fault every 10 s
    python benchmarks/soak.py --duration 20 --fault-every 5 --output soak.md

1. Starts `modelpod serve benchmarks/soak_models.py:Work ...:Isolated --model-timeout 3`.
2. Measures capacity: closed-loop requests to `work` from `--concurrency` clients for a few seconds.
3. Sends an open-loop stream at `--load` x that rate for `--duration` seconds: 80% to `work`
   (batched, in threads), 20% to `isolated` (two worker processes), every answer checked.
4. Every `--fault-every` seconds injects the next fault, in turn: a worker process killed with
   SIGKILL (as the OOM killer does), the isolated model made slow past its timeout (its workers
   are replaced), a burst of malformed requests.
5. Prints a table per window: requests sent, succeeded (answer checked), failed with a clear
   error (a JSON error message and its status), lost (no answer, a wrong answer, or an error
   without a message: must be 0), and the resident memory of the server and of its workers.

The load generator shares the machine with the server; on a small machine, capacity is what the
two together reach, and the numbers vary from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from soak_models import WEIGHTS, WIDTH  # noqa: E402  (the models file beside this one)

MODELS = [f"{HERE / 'soak_models.py'}:Work", f"{HERE / 'soak_models.py'}:Isolated"]
MODEL_TIMEOUT = 3.0  # seconds a call in a worker process may run
REQUEST_TIMEOUT = 10.0  # the deadline each request carries (Request-Timeout)
CLIENT_TIMEOUT = 30.0  # past this with no answer, a request is lost
ISOLATED_SHARE = 0.2
MAX_OUTSTANDING = 2000  # the generator sends no more while this many wait (counted as skipped)


# -- the server -----------------------------------------------------------------------------------------


@dataclass
class ServerUnderTest:
    process: subprocess.Popen[str]
    url: str
    log: Path

    def pids(self) -> tuple[int, list[int]]:
        """The server's pid and its worker processes' pids."""
        workers = []
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.Error):  # one that just died (a zombie, or gone)
                if "spawn_main" in " ".join(child.cmdline()):
                    workers.append(child.pid)
        return self.process.pid, workers

    def memory(self) -> tuple[int, int]:
        """Resident bytes of the server process, and of its worker processes together."""
        server, workers = self.pids()
        return _rss(server), sum(_rss(pid) for pid in workers)


def _rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


@contextlib.contextmanager
def started_server(workdir: Path) -> Iterator[ServerUnderTest]:
    command = [sys.executable, "-m", "modelpod", "serve", *MODELS, "--http-port", "0", "--grpc-port", "0",
               "--data-path", str(workdir / "appdata"), "--model-timeout", str(MODEL_TIMEOUT),
               "--log-level", "warning"]  # fmt: skip
    log = workdir / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env=env)  # fmt: skip
    url = _wait_ready(process, log)
    try:
        yield ServerUnderTest(process, url, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(process: subprocess.Popen[str], log: Path) -> str:
    assert process.stdout is not None
    url = None
    lines = []
    for line in process.stdout:
        lines.append(line)
        match = re.search(r"HTTP listening on (\S+)", line)
        url = match.group(1) if match else url
        if line.strip() == "modelpod: ready" and url:
            break
    else:
        raise RuntimeError("the server stopped before it was ready:\n" + "".join(lines))
    log.write_text("".join(lines))
    threading.Thread(target=_drain, args=(process, log), daemon=True).start()
    return url


def _drain(process: subprocess.Popen[str], log: Path) -> None:
    assert process.stdout is not None
    with log.open("a") as file:
        for line in process.stdout:
            file.write(line)


# -- requests and their outcomes ----------------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # "model status" -> how many, each with a message
    lost: list[str] = field(default_factory=list)
    skipped: int = 0

    def add(self, other: Tally) -> None:
        self.sent += other.sent
        self.succeeded += other.succeeded
        self.failed.update(other.failed)
        self.lost.extend(other.lost)
        self.skipped += other.skipped


def work_request(rng: random.Random) -> tuple[str, dict[str, Any], Any]:
    x = np.array([[rng.uniform(-1, 1) for _ in range(WIDTH)]], dtype=np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": x.ravel().tolist()}]}
    return "/v2/models/work/infer", body, x @ WEIGHTS


def isolated_request(rng: random.Random) -> tuple[str, dict[str, Any], Any]:
    x = rng.randint(-1000, 1000)
    return "/models/isolated/predict", {"x": x}, x * 2


def mixed_request(rng: random.Random) -> tuple[str, dict[str, Any], Any]:
    """A request to `isolated` with the probability `ISOLATED_SHARE`, else to `work`."""
    return isolated_request(rng) if rng.random() < ISOLATED_SHARE else work_request(rng)


def correct(path: str, answer: Any, expected: Any) -> bool:
    if path.startswith("/v2/"):
        (output,) = answer["outputs"]
        return bool(
            np.allclose(np.array(output["data"], np.float32).reshape(output["shape"]), expected, atol=1e-5)
        )
    return bool(answer["y"] == expected)


async def post(
    client: aiohttp.ClientSession, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    """The status and JSON answer of one request; ValueError for an answer that is not JSON."""
    async with client.post(path, data=body, headers=headers) as response:
        return response.status, json.loads(await response.read())


async def send(
    client: aiohttp.ClientSession, path: str, body: dict[str, Any], expected: Any, tally: Tally
) -> None:
    """One request, classified: succeeded (checked), failed with a clear error, or lost."""
    tally.sent += 1
    headers = {"content-type": "application/json", "request-timeout": str(REQUEST_TIMEOUT)}
    try:
        status, answer = await post(client, path, json.dumps(body).encode(), headers)
    except (aiohttp.ClientError, TimeoutError) as error:
        tally.lost.append(f"{path}: {type(error).__name__} {error}")
        return
    except ValueError:
        tally.lost.append(f"{path}: an answer that is not JSON")
        return
    if status == 200:
        if correct(path, answer, expected):
            tally.succeeded += 1
        else:
            tally.lost.append(f"{path}: a wrong answer {answer} (expected {expected})")
    elif isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"]:
        tally.failed[f"{path.split('/')[-2]} {status}"] += 1
    else:
        tally.lost.append(f"{path}: {status} without an error message")


def new_client(url: str) -> aiohttp.ClientSession:
    """aiohttp: at 32 requests in flight httpx's asyncio client sent about 70 a second here, aiohttp 2k."""
    connector = aiohttp.TCPConnector(limit=MAX_OUTSTANDING)
    return aiohttp.ClientSession(
        url, connector=connector, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    )


# -- capacity --------------------------------------------------------------------------------------------


async def capacity(server: ServerUnderTest, seconds: float, concurrency: int) -> float:
    """Requests per second that `concurrency` closed-loop clients get answered, in the soak's mix."""
    tally = Tally()
    until = time.monotonic() + seconds

    async def client_loop(client: aiohttp.ClientSession, rng: random.Random) -> None:
        while time.monotonic() < until:
            await send(client, *mixed_request(rng), tally)

    async with new_client(server.url) as client:
        await asyncio.gather(*(client_loop(client, random.Random(i)) for i in range(8)))  # warm-up
        tally, until = Tally(), time.monotonic() + seconds
        started = time.monotonic()
        await asyncio.gather(*(client_loop(client, random.Random(i)) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    if tally.lost:
        raise RuntimeError(f"requests were lost while measuring capacity: {tally.lost[:3]}")
    return tally.succeeded / elapsed


# -- faults ------------------------------------------------------------------------------------------------


@dataclass
class FaultLog:
    events: list[str] = field(default_factory=list)
    bad_sent: int = 0
    bad_refused: Counter[int] = field(default_factory=Counter)  # 4xx with a message, by status
    bad_other: list[str] = field(default_factory=list)
    slow: Tally = field(default_factory=Tally)


def malformed_requests() -> list[tuple[str, bytes, dict[str, str]]]:
    """Bodies and headers a hostile or broken client sends; each must get a 4xx with a message."""
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": [0.0] * WIDTH}
    length = {"Inference-Header-Content-Length": "9999"}
    bodies: list[tuple[str, bytes, dict[str, str]]] = [
        ("/v2/models/work/infer", b"\xff\xfe\x00not utf-8", {}),
        ("/v2/models/work/infer", b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", {}),
        ("/v2/models/work/infer", json.dumps({"inputs": [{**tensor, "shape": [2**40, 2**40]}]}).encode(), {}),
        ("/v2/models/work/infer", json.dumps({"inputs": [{**tensor, "shape": [-1, WIDTH]}]}).encode(), {}),
        ("/v2/models/work/infer", json.dumps({"inputs": [{**tensor, "datatype": "INT8"}]}).encode(), {}),
        ("/v2/models/work/infer", json.dumps({"inputs": [tensor]}).encode(), length),
        ("/v2/models/work/infer", json.dumps({"inputs": [{**tensor, "data": ["NaN"] * 3}]}).encode(), {}),
        ("/models/isolated/predict", b'{"x": NaN}', {}),
        ("/models/isolated/predict", b"\x81\x01\x02", {"content-type": "application/msgpack"}),
        ("/models/isolated/versions/..%2F..%2Fetc/predict", b"{}", {}),
        ("/models/nope/predict", b"{}", {}),
    ]  # fmt: skip
    return bodies


async def bad_input_burst(client: aiohttp.ClientSession, log: FaultLog, count: int = 120) -> None:
    bodies = malformed_requests()

    async def one(path: str, body: bytes, headers: dict[str, str]) -> None:
        log.bad_sent += 1
        try:
            status, answer = await post(client, path, body, {"content-type": "application/json", **headers})
            message = answer.get("error")
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as error:
            log.bad_other.append(f"{path}: {type(error).__name__}")
            return
        if 400 <= status < 500 and isinstance(message, str) and message:
            log.bad_refused[status] += 1
        else:
            log.bad_other.append(f"{path}: {status} {message!r}")

    await asyncio.gather(*(one(*bodies[i % len(bodies)]) for i in range(count)))


async def inject_faults(server: ServerUnderTest, client: aiohttp.ClientSession, every: float, until: float,
                        log: FaultLog, started: float) -> None:  # fmt: skip
    background: set[asyncio.Task[None]] = set()
    for number in itertools.count():
        await asyncio.sleep(max(started + every * (number + 1) - time.monotonic(), 0))
        if time.monotonic() >= until - 1:
            break
        at = f"t={time.monotonic() - started:4.1f}s"
        kind = ("worker kill", "slow model", "bad input burst")[number % 3]
        if kind == "worker kill":
            _, workers = server.pids()
            if workers:
                victim = random.choice(workers)
                os.kill(victim, signal.SIGKILL)
                log.events.append(f"{at} worker kill: SIGKILL to worker pid {victim}")
            else:
                log.events.append(f"{at} worker kill: no worker running (still restarting)")
        elif kind == "slow model":
            for _ in range(2):  # both workers busy past --model-timeout: abandoned, replaced
                body = {"x": 1, "how": "slow", "seconds": 30}
                task = asyncio.create_task(send(client, "/models/isolated/predict", body, 2, log.slow))
                background.add(task)
                task.add_done_callback(background.discard)
            log.events.append(
                f"{at} slow model: 2 calls of 30 s to isolated (model timeout {MODEL_TIMEOUT:g} s)"
            )
        else:
            await bad_input_burst(client, log)
            log.events.append(f"{at} bad input burst: {len(malformed_requests())} kinds of malformed request")
    if background:
        await asyncio.gather(*background)


# -- the soak --------------------------------------------------------------------------------------------


@dataclass
class Window:
    start: float
    tally: Tally = field(default_factory=Tally)
    server_rss: int = 0
    workers_rss: int = 0


async def soak(server: ServerUnderTest, rate: float, duration: float, every: float, window: float
               ) -> tuple[list[Window], FaultLog, list[tuple[float, int, int]]]:  # fmt: skip
    windows = [Window(start) for start in np.arange(0, duration, window)]
    faults = FaultLog()
    memory: list[tuple[float, int, int]] = []
    rng = random.Random(1)
    started = time.monotonic()
    until = started + duration
    outstanding: set[asyncio.Task[None]] = set()

    async def sample_memory() -> None:
        while time.monotonic() < until:
            server_rss, workers_rss = await asyncio.to_thread(server.memory)
            memory.append((time.monotonic() - started, server_rss, workers_rss))
            await asyncio.sleep(1.0)

    async with new_client(server.url) as client:
        sampler = asyncio.create_task(sample_memory())
        injector = asyncio.create_task(inject_faults(server, client, every, until, faults, started))
        for number in itertools.count():
            due = started + number / rate
            if due >= until:
                break
            await asyncio.sleep(max(due - time.monotonic(), 0))
            now = time.monotonic() - started
            tally = windows[min(int(now // window), len(windows) - 1)].tally
            if len(outstanding) >= MAX_OUTSTANDING:
                tally.skipped += 1
                continue
            task = asyncio.create_task(send(client, *mixed_request(rng), tally))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        await asyncio.gather(*outstanding)
        await injector
        await sampler
    for each in windows:
        samples = [m for m in memory if m[0] <= each.start + window] or memory[:1]
        each.server_rss, each.workers_rss = samples[-1][1], samples[-1][2]
    return windows, faults, memory


# -- the report ------------------------------------------------------------------------------------------


def _failed(failed: Counter[str] | Counter[int]) -> str:
    total = sum(failed.values())
    if not total:
        return "0"
    return f"{total} ({', '.join(f'{kind}: {count}' for kind, count in sorted(failed.items()))})"


def report(windows: list[Window], faults: FaultLog, memory: list[tuple[float, int, int]], capacity_rps: float,
           rate: float, args: argparse.Namespace) -> str:  # fmt: skip
    mib = 2**20
    total = Tally()
    lines = [
        f"Soak: {args.duration:g} s at {rate:,.0f} req/s ({args.load:.0%} of a measured capacity of "
        f"{capacity_rps:,.0f} req/s), a fault every {args.fault_every:g} s; "
        f"{1 - ISOLATED_SHARE:.0%} of requests to `work` (threads, batched), {ISOLATED_SHARE:.0%} to "
        "`isolated` (2 worker processes).",
        "",
        "| window | sent | succeeded | failed with a clear error (model status: count) | lost "
        "| server RSS MiB | workers RSS MiB |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for each in windows:
        t = each.tally
        total.add(t)
        end = min(each.start + args.window, args.duration)
        memory_mib = f"{each.server_rss / mib:.0f} | {each.workers_rss / mib:.0f}"
        lines.append(f"| {each.start:.0f}-{end:.0f} s | {t.sent:,} | {t.succeeded:,} | {_failed(t.failed)} "
                     f"| {len(t.lost)} | {memory_mib} |")  # fmt: skip
    lines.append(f"| **total** | **{total.sent:,}** | **{total.succeeded:,}** | **{_failed(total.failed)}** "
                 f"| **{len(total.lost)}** | | |")  # fmt: skip
    server = [m[1] for m in memory]
    half = len(server) // 2
    lines += [
        "",
        f"- Faults: {'; '.join(faults.events) or 'none'}.",
        f"- Slow calls: {faults.slow.sent} sent, {_failed(faults.slow.failed)} answered with a clear error, "
        f"{len(faults.slow.lost)} lost.",
        f"- Malformed requests: {faults.bad_sent} sent, {_failed(faults.bad_refused)} refused with a 4xx "
        f"and a message (by status), {len(faults.bad_other)} otherwise.",
        f"- Server RSS: {server[0] / mib:.0f} MiB at start, peak {max(server) / mib:.0f} MiB; mean "
        f"{np.mean(server[:half] or server) / mib:.0f} MiB in the first half, "
        f"{np.mean(server[half:]) / mib:.0f} MiB in the second.",
    ]
    if total.skipped:
        lines.append(f"- Not sent: {total.skipped} (the generator had {MAX_OUTSTANDING} requests waiting).")
    for lost in (total.lost + faults.slow.lost + faults.bad_other)[:10]:
        lines.append(f"- Lost: {lost}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--fault-every", type=float, default=10.0, help="seconds between faults (default 10)")
    parser.add_argument(
        "--load", type=float, default=0.8, help="share of measured capacity to send (default 0.8)"
    )
    parser.add_argument(
        "--window", type=float, default=None, help="seconds per table row (default duration/6)"
    )
    parser.add_argument("--capacity-seconds", type=float, default=5.0, help="how long to measure capacity")
    parser.add_argument("--concurrency", type=int, default=32, help="clients while measuring capacity")
    parser.add_argument("--output", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args()
    args.window = args.window or max(args.duration / 6, 1.0)
    with (
        tempfile.TemporaryDirectory(prefix="modelpod-soak-") as workdir,
        started_server(Path(workdir)) as server,
    ):
        capacity_rps = asyncio.run(capacity(server, args.capacity_seconds, args.concurrency))
        rate = capacity_rps * args.load
        print(
            f"capacity {capacity_rps:,.0f} req/s; soaking at {rate:,.0f} req/s for {args.duration:g} s",
            flush=True,
        )
        windows, faults, memory = asyncio.run(
            soak(server, rate, args.duration, args.fault_every, args.window)
        )
        text = report(windows, faults, memory, capacity_rps, rate, args)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    lost = sum(len(w.tally.lost) for w in windows) + len(faults.slow.lost) + len(faults.bad_other)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
