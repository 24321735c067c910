"""`modelpod train ADDRESS MODEL[:VERSION] [NAME=VALUE ...] [--follow]`: start a job on a server, and
optionally follow it with a progress bar until it ends."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modelpod.extras import needs_extra

if TYPE_CHECKING:
    from modelpod.client import Client

FOLLOW_POLL = 0.25  # seconds between looks at the job


def add_command(commands: Any) -> None:
    train = commands.add_parser("train", help="train a served model version in the background")
    train.add_argument("address", help="the server: http://host:port, or host:port for gRPC")
    train.add_argument(
        "model", metavar="MODEL[:VERSION]", help="the model, and a version (default: its default)"
    )
    train.add_argument("options", nargs="*", metavar="NAME=VALUE",
                       help="train()'s keyword arguments; VALUE is read as JSON when it can be")  # fmt: skip
    train.add_argument("--follow", action="store_true", help="show its progress until the job ends")


def run(arguments: argparse.Namespace) -> int:
    from modelpod.errors import ModelpodError

    with needs_extra("client", "modelpod train"):
        from modelpod.client import Client
    if arguments.follow:  # checked before the job starts, not after
        with needs_extra("client", "modelpod train --follow"):
            import rich.progress  # noqa: F401

    model, _, version = arguments.model.partition(":")
    try:
        options = parse_options(arguments.options)
        with Client(arguments.address, model=model, version=version or None) as client:
            job: dict[str, Any] | None = client.start_training(**options)
            if arguments.follow:
                job = follow(client)
    except (ModelpodError, ValueError) as error:
        print(f"modelpod: {error}", file=sys.stderr)
        return 1
    if job is not None and job["state"] == "failed":
        print(f"modelpod: training {arguments.model} failed: {job['error']}", file=sys.stderr)
        return 1
    print(json.dumps(job, indent=2, default=repr))
    return 0


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`steps=3 name=x` -> {"steps": 3, "name": "x"}: JSON values where they parse, text otherwise."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if not equals or not name.isidentifier():
            raise ValueError(f"{pair!r} is not NAME=VALUE")
        try:
            options[name] = json.loads(text)
        except ValueError:
            options[name] = text
    return options


def follow(client: Client) -> dict[str, Any] | None:
    """A progress bar of the job's reported steps and metrics, until the job ends; its last document."""
    with needs_extra("client", "modelpod train --follow"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[metrics]}"))  # fmt: skip
    with Progress(*columns) as progress:
        task = progress.add_task("training", total=None, metrics="")
        while True:
            job = client.training()
            reported = (job or {}).get("progress") or {}
            metrics = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in (reported.get("metrics") or {}).items())  # fmt: skip
            progress.update(task, completed=reported.get("step") or 0, total=reported.get("total"),
                            metrics=metrics)  # fmt: skip
            if job is None or job["state"] != "running":
                progress.update(task, description=job["state"] if job else "gone")
                return job
            time.sleep(FOLLOW_POLL)
