"""The command line: `modelpod serve MODEL...`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

EPILOG = """Each MODEL is FILE.py:Class, package.module:Class, or NAME=... to serve it under another
name. A model is a modelpod.Model subclass, a class with __init__(config) and
predict(payload, query_params), or a function. Every option can also be set by its
environment variable; a flag wins over the environment."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelpod", description="Serve Python models over HTTP and gRPC.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve models over HTTP and gRPC",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("models", nargs="+", metavar="MODEL", help="what to serve")
    _add_settings(serve)
    return parser


def _add_settings(parser: argparse.ArgumentParser) -> None:
    from modelpod.config import Settings

    for name, field in Settings.model_fields.items():
        default = field.default if field.default is not None else "no limit"
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.split("_")[-1].upper(),
            help=f"{field.description} [env MODELPOD_{name.upper()}; default {default}]",
        )


def run_serve(arguments: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from modelpod.config import Settings
    from modelpod.loader import parse_reference
    from modelpod.server.app import serve

    overrides: dict[str, Any] = {
        key: value
        for key, value in vars(arguments).items()
        if key not in ("command", "models") and value is not None
    }
    try:
        settings = Settings(**overrides)
        targets = [_named(parse_reference(reference)) for reference in arguments.models]
    except (ValidationError, ValueError) as error:
        print(f"modelpod: {error}", file=sys.stderr)
        return 2
    try:
        serve(*targets, settings=settings)
    except OSError as error:
        print(f"modelpod: {error}", file=sys.stderr)
        return 2
    return 0


def _named(pair: tuple[str | None, Any]) -> Any:
    name, target = pair
    return target if name is None else (name, target)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "serve":
        return run_serve(arguments)
    return 2  # pragma: no cover  (argparse rejects unknown commands first)


if __name__ == "__main__":
    sys.exit(main())
