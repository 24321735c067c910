"""HTTP load from `wrk`: a Lua script POSTs one fixed body at a fixed number of connections."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from tempfile import TemporaryDirectory

from measurement import Measurement

_SCRIPT = """wrk.method = "POST"
local file = io.open("{body}", "rb")
wrk.body = file:read("*a")
file:close()
{headers}
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
JSON = {"Content-Type": "application/json"}


def available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    warmup_seconds: float = 1.0,
) -> Measurement:
    """`concurrency` connections for `seconds` after `warmup_seconds` of the same load (not counted)."""
    with TemporaryDirectory(prefix="modelpod-wrk-") as folder:
        (Path(folder) / "body").write_bytes(body)
        header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or JSON).items())
        script = Path(folder) / "post.lua"
        script.write_text(_SCRIPT.format(body=Path(folder) / "body", headers=header_lines))

        def wrk(duration: float) -> str:
            command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(round(duration), 1)}s", "--timeout", "5s"]
            command += ["--latency", "-s", str(script), url]
            limit = duration + 30  # wrk stops itself; this only guards against a hang
            return subprocess.run(command, capture_output=True, text=True, check=True, timeout=limit).stdout

        if warmup_seconds > 0:
            wrk(warmup_seconds)
        return parse(wrk(seconds))


def parse(output: str) -> Measurement:
    """requests/s, p50, p99 and errors (non-2xx answers and socket errors) from `wrk --latency`."""

    def number(pattern: str, default: float | None = None) -> float:
        match = re.search(pattern, output)
        if match is None:
            if default is not None:
                return default
            raise RuntimeError(f"cannot read {pattern!r} from wrk's output:\n{output}")
        value = float(match.group(1))
        return value * _UNITS[match.group(2)] if match.lastindex == 2 else value

    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(number(r"Non-2xx or 3xx responses: (\d+)", 0.0))
    errors += sum(int(n) for n in socket.groups()) if socket else 0
    return Measurement(
        throughput=number(r"Requests/sec:\s+([\d.]+)"),
        p50_ms=number(r"\s50%\s+([\d.]+)(us|ms|s|m)\b"),
        p99_ms=number(r"\s99%\s+([\d.]+)(us|ms|s|m)\b"),
        errors=errors,
        requests=int(number(r"(\d+) requests in")),
    )
