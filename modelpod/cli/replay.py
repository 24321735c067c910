"""`modelpod replay ADDRESS --model NAME --against VERSION`: send a model's captured requests
(`serve --capture`) to a version on a server, and report how often it agrees with what was answered
then, per output, the latencies, and the requests that disagree. How a new version is checked on
real traffic before it becomes the default.

Each captured model call is sent as it was made (`predict` with its keyword arguments, arrays
exact); a failed request, or one with a value that was over the capture's size limit, is skipped.
A captured stream is replayed as a stream (`predict_stream`): its output is its text, when every
item is text (a generation, however it is cut into pieces), else its list of items, compared item
by item; a stream its caller ended early (a stop sequence) is read as far as it was then, and one
whose items were not all kept is skipped.
Latencies: "captured" is what the server measured then, "replayed" what this client measures now
(the round trip included).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import re
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from modelpod.cli.capture import add_location, captured
from modelpod.extras import needs_extra
from modelpod.observe.capture_codec import Incomplete, decode

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_command(commands: Any) -> None:
    replay = commands.add_parser(
        "replay", help="send captured requests to a version and compare its answers with the captured ones"
    )
    replay.add_argument("address", nargs="?", help="the server: http://host:port, or host:port for gRPC")
    replay.add_argument("--local", default=None, metavar="MODEL",
                        help="run the version in this process instead of on a server: FILE.py:Class, "
                        "package.module:Class or a model file, its versions under --data-path")  # fmt: skip
    replay.add_argument("--model", required=True, help="whose captured requests")
    replay.add_argument("--against", required=True, metavar="VERSION", help="the version to send them to")
    replay.add_argument("--since", default=None, metavar="WHEN",
                        help="captured from then on: 2026-01-31T12:00, or ago: 30m, 2h, 1d")  # fmt: skip
    replay.add_argument("--limit", type=int, default=None, metavar="N", help="the newest N requests at most")
    replay.add_argument("--fail-under", type=float, default=None, metavar="SHARE",
                        help="exit 1 if fewer than this share of the requests agree, e.g. 0.99")  # fmt: skip
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    add_location(replay)


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """A Unix time from `30m` / `2h` / `1d` (ago) or an ISO 8601 time (UTC unless it says)."""
    if text is None:
        return None
    ago = _AGO.match(text.strip())
    if ago:
        return (now if now is not None else time.time()) - float(ago.group(1)) * _UNITS[ago.group(2)]
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a time (2026-01-31T12:00) or how long ago (30m, 2h, 1d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def selected(arguments: argparse.Namespace) -> list[dict[str, Any]]:
    """The captured requests to replay, oldest first: from `--since`, the newest `--limit`. Read
    before any is sent, so that a server capturing the replay's own requests cannot feed it."""
    found = captured(arguments, arguments.model, parse_since(arguments.since))
    return list(deque(found, maxlen=arguments.limit))


def run(arguments: argparse.Namespace) -> int:
    from modelpod.errors import ModelpodError

    with needs_extra("client", "modelpod replay"):
        from modelpod.cli.replay_report import Report, render
        from modelpod.client import Client

    if arguments.limit is not None and arguments.limit < 1:
        print("modelpod: --limit must be at least 1", file=sys.stderr)
        return 2
    if (arguments.address is None) == (arguments.local is None):
        print(
            "modelpod: give the server's ADDRESS, or --local MODEL to replay in this process", file=sys.stderr
        )
        return 2
    report = Report(
        arguments.model, arguments.against, arguments.address or f"{arguments.local} (in-process)"
    )
    try:
        records = selected(arguments)
        target = _local(arguments) if arguments.local else Client(arguments.address, model=arguments.model,
                                                                  version=arguments.against)  # fmt: skip
        with target:
            for record in records:
                _replay(target, record, report)
    except (ModelpodError, ValueError, ImportError, OSError) as error:
        print(f"modelpod: {error}", file=sys.stderr)
        return 1
    document = report.document()
    if arguments.json:
        print(json.dumps(document, indent=2))
    else:
        render(document)
    if arguments.fail_under is not None and (document["agreement"] or 0.0) < arguments.fail_under:
        return 1
    return 0


def _local(arguments: argparse.Namespace) -> Any:
    """The version loaded in this process (a `Runner`: `predict(**call)` as a client has)."""
    import os

    from modelpod.runtime.loader import parse_reference
    from modelpod.runtime.runner import Runner

    _, target = parse_reference(arguments.local)
    data_path = arguments.data_path or os.environ.get("MODELPOD_DATA_PATH") or "appdata"
    return Runner(target, version=arguments.against, data_path=data_path, name=arguments.model)


def _replay(client: Any, record: dict[str, Any], report: Any) -> None:
    """Send one captured request's calls again and tally the answers."""
    from modelpod.errors import ModelpodError, Unavailable

    if record.get("outcome") != "ok" or record.get("outputs") is None:
        report.skip("failed when captured")
        return
    try:
        calls, recorded = decode(record["inputs"]), decode(record["outputs"])
    except Incomplete:
        report.skip("values over the capture's size limit")
        return
    stream = record.get("stream")
    if stream is not None and stream.get("kept", 0) < stream.get("items", 0):
        report.skip("stream items over the capture's size limit")
        return
    started = time.perf_counter()
    try:
        if stream is None:
            answers = [client.predict(**call) for call in calls]
        else:  # as many items as were captured when its caller ended it early (a stop sequence)
            most = stream["items"] if stream.get("closed_by_caller") else None
            answers = [streamed(client.predict_stream(**call), most) for call in calls]
            recorded = [streamed(iter(items), None) for items in recorded]
    except Unavailable:
        raise  # the server is gone: no point going on
    except ModelpodError as error:
        report.failed(record, error)
        return
    report.answered(record, recorded, answers, time.perf_counter() - started)


def streamed(items: Iterator[Any], most: int | None) -> dict[str, Any]:
    """A stream's answer as compared: its text when every item is text (a generation's pieces may
    be cut differently into the same text), else its items, one by one. The stream is closed after
    `most` items."""
    taken = list(itertools.islice(items, most))
    close = getattr(items, "close", None)
    if close is not None:
        close()
    if taken and all(isinstance(item, str) for item in taken):
        return {"text": "".join(taken)}
    return {"items": taken}
