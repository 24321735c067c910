"""`modelpod capture list|show`: what a server's payload capture wrote (`--capture`), read from disk."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelpod.extras import needs_extra
from modelpod.observe import capture_files


def add_command(commands: Any) -> None:
    capture = commands.add_parser("capture", help="the requests a server captured (serve --capture)")
    actions = capture.add_subparsers(dest="action", required=True)
    listed = actions.add_parser("list", help="each model's captured requests: how many, from when to when")
    listed.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_location(listed)
    show = actions.add_parser("show", help="one captured request, as JSON")
    show.add_argument("model")
    show.add_argument("request_id", metavar="REQUEST_ID")
    add_location(show)


def add_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--capture-path", default=None, help="where the captures are [env "
                        "MODELPOD_CAPTURE_PATH; default: _capture under the data path]")  # fmt: skip
    parser.add_argument("--data-path", default=None, help="[env MODELPOD_DATA_PATH; default appdata]")
    parser.add_argument("--capture-store", default=None, metavar="URL", help="read them from this "
                        "database instead (serve --capture-store) [env MODELPOD_CAPTURE_STORE]")  # fmt: skip


def _store_url(arguments: argparse.Namespace) -> str | None:
    return arguments.capture_store or os.environ.get("MODELPOD_CAPTURE_STORE") or None


def captured_models(arguments: argparse.Namespace) -> list[str]:
    """The models with captured requests, in the files or the database the arguments name."""
    url = _store_url(arguments)
    if url is None:
        return capture_files.models(directory(arguments))
    with needs_extra("store", "--capture-store"):
        from modelpod.registry import captures

    return captures.models(url)


def captured(
    arguments: argparse.Namespace, model: str, since: float | None = None
) -> Iterator[dict[str, Any]]:
    """A model's captured records, oldest first, from the files or the database."""
    url = _store_url(arguments)
    if url is None:
        return capture_files.records(directory(arguments), model, since)
    with needs_extra("store", "--capture-store"):
        from modelpod.registry import captures

    return captures.records(url, model, since)


def directory(arguments: argparse.Namespace) -> Path:
    """The capture folder a server with the same settings writes to."""
    given = arguments.capture_path or os.environ.get("MODELPOD_CAPTURE_PATH")
    if given:
        return Path(given)
    return (
        Path(arguments.data_path or os.environ.get("MODELPOD_DATA_PATH") or "appdata")
        / capture_files.CAPTURE_FOLDER
    )


def run(arguments: argparse.Namespace) -> int:
    where = _store_url(arguments) or directory(arguments)
    if arguments.action == "show":
        for record in captured(arguments, arguments.model):
            if record.get("request_id") == arguments.request_id:
                print(json.dumps(record, indent=2))
                return 0
        print(f"modelpod: no captured request {arguments.request_id!r} of {arguments.model} in {where}",
              file=sys.stderr)  # fmt: skip
        return 1
    summary = [_summary(arguments, model) for model in captured_models(arguments)]
    if arguments.json:
        print(json.dumps(summary, indent=2))
    elif not summary:
        print(f"no captured requests in {where}")
    else:
        print(_table(summary))
    return 0


def _summary(arguments: argparse.Namespace, model: str) -> dict[str, Any]:
    times: list[float] = []
    errors = 0
    for record in captured(arguments, model):
        times.append(float(record.get("time", 0)))
        errors += record.get("outcome") != "ok"
    folder = directory(arguments) / model
    files = 0 if _store_url(arguments) else len(list(folder.glob(capture_files.PATTERN)))
    return {"model": model, "records": len(times), "errors": errors, "files": files,
            "first": min(times, default=None), "last": max(times, default=None)}  # fmt: skip


def _table(summary: list[dict[str, Any]]) -> str:
    def when(t: float | None) -> str:
        return "-" if t is None else datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")

    rows = [("MODEL", "RECORDS", "ERRORS", "FILES", "FIRST", "LAST")]
    rows += [(s["model"], str(s["records"]), str(s["errors"]), str(s["files"]), when(s["first"]),
              when(s["last"])) for s in summary]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
