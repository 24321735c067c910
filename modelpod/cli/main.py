"""The command line: `modelpod serve MODEL...`, `modelpod train ...`, `modelpod models ...`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from modelpod._version import __version__
from modelpod.cli import capture as cli_capture
from modelpod.cli import ray_backend as cli_ray
from modelpod.cli import replay as cli_replay
from modelpod.cli import train as cli_train
from modelpod.extras import MissingExtra, needs_extra

EPILOG = """Each MODEL is FILE.py:Class, package.module:Class, a model file, or NAME=... to serve it
under another name. A model is a modelpod.Model subclass, a class with __init__(config) and
predict(payload, query_params), or a function. A model file is served by the runtime of its
format, recognised from the file (--runtime forces one), under the file's stem: an ONNX graph
(extra onnx), a scikit-learn estimator in joblib or pickle (extra sklearn, or boosting for XGBoost
and LightGBM; --allow-pickle, since loading it runs code), a TorchScript or torch.export archive
(extra torch), a Hugging Face transformers folder (extra transformers), a sentence-transformers
folder (extra embeddings), an MLflow model (extra mlflow; --allow-pickle). --repository DIR serves
a folder of them. Every option can also be set by its environment variable; a flag wins over the
environment, which wins over a -c file."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelpod", description="Serve Python models over HTTP and gRPC.")
    parser.add_argument("--version", action="version", version=f"modelpod {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve models over HTTP and gRPC",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("models", nargs="*", metavar="MODEL", help="what to serve")
    serve.add_argument(
        "--model",
        dest="store_models",
        action="append",
        default=[],
        metavar="IDENTIFIER[:VERSION]",
        help="serve a model recorded in the store (--store); repeatable",
    )
    serve.add_argument(
        "--pipeline",
        dest="pipelines",
        action="append",
        default=[],
        metavar="NAME=MODEL,MODEL,...",
        help="serve the named models as one model NAME, each step's result the next one's input; "
        "MODEL|MODEL branches (?branch=MODEL picks one, the first by default); repeatable",
    )
    serve.add_argument("-c", "--config", default=None, metavar="FILE",
                       help="serve the models and settings of a YAML file (flags win)")  # fmt: skip
    _add_file_options(serve)
    _add_settings(serve)
    cli_ray.add_options(serve)
    _add_config_command(commands)
    _add_models_command(commands)
    cli_train.add_command(commands)
    cli_capture.add_command(commands)
    cli_replay.add_command(commands)
    commands.add_parser("doctor", help="what is installed, for a bug report: Python, extras, devices")
    return parser


FILE_OPTIONS = ("runtime", "runtime_options", "config")


def _add_file_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--runtime", default=None, metavar="NAME",
                       help="serve each model file with this runtime (onnx, sklearn, torchscript, ...) "
                       "instead of the one its format names")  # fmt: skip
    serve.add_argument("--runtime-option", dest="runtime_options", action="append", default=[],
                       metavar="NAME=VALUE", help="an option of the model files' runtime, e.g. "
                       "intra_op_threads=2 (onnx); repeatable")  # fmt: skip


def runtime_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`NAME=VALUE` pairs -> options; a VALUE that reads as a number is one."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--runtime-option {pair!r}: expected NAME=VALUE")
        options[name] = int(value) if value.lstrip("-").isdigit() else value
    return options


def _add_config_command(commands: Any) -> None:
    config = commands.add_parser("config", help="the settings modelpod serve would run with (--print)")
    config.add_argument("--print", dest="print_settings", action="store_true", required=True,
                        help="print them as YAML: flags, then the environment, then the -c file")  # fmt: skip
    config.add_argument("-c", "--config", default=None, metavar="FILE", help="a modelpod.yaml")
    _add_settings(config)


def _add_models_command(commands: Any) -> None:
    models = commands.add_parser("models", help="the models recorded in a store")
    models.add_argument("--store", default=None, help="the store's database URL [env MODELPOD_STORE; "
                        "default: SQLite under the data path]")  # fmt: skip
    models.add_argument("--data-path", default=None, help="[env MODELPOD_DATA_PATH; default appdata]")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every version of every model")
    show = actions.add_parser("show", help="every version of one model")
    show.add_argument("identifier")
    remove = actions.add_parser("remove", help="forget a version, or every version of a model")
    remove.add_argument("identifier")
    remove.add_argument("version", nargs="?")


def _add_settings(parser: argparse.ArgumentParser) -> None:
    try:
        from modelpod.server.settings import Settings
    except ImportError:  # no server extra: `modelpod serve` says so when it is run, not before
        return
    for name, field in Settings.model_fields.items():
        default = field.default if field.default is not None else "none"
        if name.endswith("_memory"):
            default = "no limit"
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} [env MODELPOD_{name.upper()}; default {default}]"
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action="store_const", const=True, default=None, help=help_text
            )
        else:
            parser.add_argument(
                flag, dest=name, default=None, metavar=name.split("_")[-1].upper(), help=help_text
            )


def run_serve(arguments: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from modelpod.cli import config_file
    from modelpod.errors import ModelpodError
    from modelpod.runtime.loader import parse_reference
    from modelpod.serving.served_pipeline import parse_pipeline

    with needs_extra("server", "modelpod serve"):
        from pydantic import ValidationError

        from modelpod.server.app import serve
        from modelpod.server.settings import Settings

    overrides: dict[str, Any] = {
        key: value
        for key, value in vars(arguments).items()
        if key not in ("command", "models", "store_models", "pipelines", *FILE_OPTIONS, *cli_ray.OPTIONS)
        and value is not None
    }
    try:
        file = config_file.read(Path(arguments.config)) if arguments.config else None
        if file is not None:
            overrides = config_file.settings_below_flags(file, overrides, os.environ)
        settings = Settings(**overrides)
        options = runtime_options(arguments.runtime_options)
        targets = [
            _named(parse_reference(reference, arguments.runtime, settings.allow_pickle, **options))
            for reference in arguments.models
        ]
        targets += config_file.targets(file, settings.allow_pickle) if file is not None else []
        targets += [parse_pipeline(text) for text in arguments.pipelines]
    except (ValidationError, ValueError, PermissionError, ModelpodError) as error:
        print(f"modelpod: {error}", file=sys.stderr)
        return 2
    if not targets and not arguments.store_models and settings.repository is None:
        print("modelpod: nothing to serve: give a MODEL, --repository DIR, or --store URL --model IDENTIFIER",
              file=sys.stderr)  # fmt: skip
        return 2
    if arguments.backend == "ray" and settings.repository is not None:
        print("modelpod: --repository is served by the default backend, not --backend ray", file=sys.stderr)
        return 2
    try:
        if arguments.backend == "ray":
            if settings.capture:  # its replicas record no payloads yet: say so rather than drop them
                raise ValueError("--capture is not available with --backend ray yet")
            return cli_ray.run(arguments, targets, settings)
        serve(*targets, settings=settings, store_models=arguments.store_models, runtime=arguments.runtime,
              runtime_options=options)  # fmt: skip
    except (OSError, ModelpodError, ValueError) as error:
        print(f"modelpod: {error}", file=sys.stderr)
        return 2
    return 0


def _named(pair: tuple[str | None, Any]) -> Any:
    name, target = pair
    return target if name is None else (name, target)


def run_models(arguments: argparse.Namespace) -> int:
    import json
    import os

    from modelpod.errors import ModelpodError

    with needs_extra("store", "modelpod models"):
        from modelpod.registry.store import Store

    url = arguments.store or os.environ.get("MODELPOD_STORE")
    store = Store(url, data_path=arguments.data_path)
    try:
        if arguments.action == "remove":
            count = store.remove(arguments.identifier, arguments.version)
            print(f"removed {count} version{'s' if count != 1 else ''} of {arguments.identifier}")
            return 0
        records = store.list() if arguments.action == "list" else store.show(arguments.identifier)
        if arguments.action == "show" and not records:
            raise ModelpodError(f"the store has no model {arguments.identifier!r}")
    except ModelpodError as error:
        print(f"modelpod: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if arguments.json:
        print(json.dumps([r.as_dict() | {"reference": r.reference} for r in records], indent=2))
    else:
        print(_table(records))
    return 0


def _table(records: Sequence[Any]) -> str:
    import datetime

    rows = [("IDENTIFIER", "VERSION", "UUID", "CLASS", "APPLIED")]
    for r in records:
        applied = datetime.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            (r.identifier, r.version, r.uuid, r.class_ref + (" (pickled)" if r.pickled else ""), applied)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments, unknown = parser.parse_known_args(argv)
    if arguments.command == "serve":  # models after flags: argparse takes one run of positionals alone
        arguments.models += [item for item in unknown if not item.startswith("-")]
        unknown = [item for item in unknown if item.startswith("-")]
    try:
        if unknown:
            if arguments.command == "serve":  # its settings' flags are unknown without the server extra
                with needs_extra("server", "modelpod serve"):
                    import modelpod.server.settings  # noqa: F401
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return _run(arguments)
    except MissingExtra as error:
        print(f"modelpod: {error}", file=sys.stderr)
        return 2


def _run(arguments: argparse.Namespace) -> int:
    if arguments.command == "serve":
        return run_serve(arguments)
    if arguments.command == "config":
        from modelpod.cli.config_file import print_settings

        return print_settings(arguments)
    if arguments.command == "train":
        return cli_train.run(arguments)
    if arguments.command == "replay":
        return cli_replay.run(arguments)
    if arguments.command == "capture":
        return cli_capture.run(arguments)
    if arguments.command == "doctor":
        from modelpod.cli.doctor import report

        print(report())
        return 0
    return run_models(arguments)


if __name__ == "__main__":
    sys.exit(main())
