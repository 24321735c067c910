"""Where the modelpod server's time goes under the MLP load at 64 connections, by py-spy.

    python benchmarks/profile_server.py [--seconds 10] [--output /tmp/modelpod-profile.json] [--native]

Starts `modelpod serve benchmarks/models.py:MLP`, drives it with `wrk` (HTTP JSON, 64 connections)
and records the server process with `py-spy record --format speedscope` (pip install py-spy;
needs ptrace rights: root, or CAP_SYS_PTRACE). Prints the functions with the most own time
(the leaf of each sample) and the most total time (anywhere on the stack), over all threads;
open the speedscope file at https://www.speedscope.app for the whole picture.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

import servers
import wrk_load
from payloads import native_json


def summarise(speedscope: Path, top: int) -> str:
    """Own and total sample shares per function, all threads together."""
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]
    own: Counter[int] = Counter()
    total: Counter[int] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            samples += weight
            threads[profile.get("name", "?")] += weight
            if stack:
                own[stack[-1]] += weight
            for frame in set(stack):
                total[frame] += weight

    def name(index: int) -> str:
        frame = frames[index]
        where = Path(frame.get("file") or "?")
        short = "/".join(where.parts[-2:])
        return f"{frame['name']} ({short}:{frame.get('line', '?')})"

    lines = [f"{samples:.1f} s of samples over {len(data['profiles'])} threads:"]
    lines += [f"  {weight / samples:6.1%}  {thread}" for thread, weight in threads.most_common()]
    lines += ["", "own time:"]
    lines += [f"  {weight / samples:6.1%}  {name(i)}" for i, weight in own.most_common(top)]
    lines += ["", "total time:"]
    lines += [f"  {weight / samples:6.1%}  {name(i)}" for i, weight in total.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--output", type=Path, default=Path("/tmp/modelpod-profile.json"))
    parser.add_argument("--native", action="store_true", help="include native (C) frames")
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL")
    parser.add_argument("--top", type=int, default=25)
    options = parser.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    with TemporaryDirectory(prefix="modelpod-profile-") as folder:
        work = Path(folder)
        server = servers.modelpod(work, work / "data", ["benchmarks/models.py:MLP"])
        with servers.running(server, "/v2/health/ready"):
            url = server.url + "/models/mlp/predict"
            load = threading.Thread(
                target=wrk_load.run_wrk,
                args=(url, native_json("MLP").body, options.concurrency, options.seconds + 2),
                kwargs={"warmup_seconds": 0},
            )
            load.start()
            command = [
                "py-spy",
                "record",
                "--pid",
                str(server.process.pid),
                "--duration",
                str(options.seconds),
            ]
            command += ["--format", "speedscope", "--output", str(options.output), "--nonblocking"]
            if options.native:
                command.append("--native")
            if options.gil:
                command.append("--gil")
            subprocess.run(command, check=True, timeout=options.seconds + 60, capture_output=True)
            load.join(timeout=options.seconds + 60)
    print(summarise(options.output, options.top))
    print(f"\nspeedscope profile: {options.output}")


if __name__ == "__main__":
    main()
