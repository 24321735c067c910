"""`modelpod capture list|show`: what a server's payload capture wrote (`--capture`), read from disk."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

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
                        "MODELPOD_CAPTURE_PATH; default: capture under the data path]")  # fmt: skip
    parser.add_argument("--data-path", default=None, help="[env MODELPOD_DATA_PATH; default appdata]")


def directory(arguments: argparse.Namespace) -> Path:
    """The capture folder a server with the same settings writes to."""
    given = arguments.capture_path or os.environ.get("MODELPOD_CAPTURE_PATH")
    if given:
        return Path(given)
    return Path(arguments.data_path or os.environ.get("MODELPOD_DATA_PATH") or "appdata") / "capture"


def run(arguments: argparse.Namespace) -> int:
    folder = directory(arguments)
    if arguments.action == "show":
        for record in capture_files.records(folder, arguments.model):
            if record.get("request_id") == arguments.request_id:
                print(json.dumps(record, indent=2))
                return 0
        print(f"modelpod: no captured request {arguments.request_id!r} of {arguments.model} under {folder}",
              file=sys.stderr)  # fmt: skip
        return 1
    summary = [_summary(folder, model) for model in capture_files.models(folder)]
    if arguments.json:
        print(json.dumps(summary, indent=2))
    elif not summary:
        print(f"no captured requests under {folder}")
    else:
        print(_table(summary))
    return 0


def _summary(folder: Path, model: str) -> dict[str, Any]:
    times: list[float] = []
    errors = 0
    for record in capture_files.records(folder, model):
        times.append(float(record.get("time", 0)))
        errors += record.get("outcome") != "ok"
    files = len(list((folder / model).glob(capture_files.PATTERN)))
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
