"""Settings: `MODELPOD_*` environment variables, overridden by flags and arguments; sizes with units."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from modelpod.cli.main import build_parser
from modelpod.server.settings import Settings, parse_size


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MODELPOD_* variable of the machine running the tests leaks into these."""
    for name in list(os.environ):
        if name.startswith("MODELPOD_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("512b", 512),
        ("1k", 1000),
        ("1KB", 1000),
        ("3 MB", 3_000_000),
        (" 2gb ", 2_000_000_000),
        ("1.5g", 1_500_000_000),
        ("1t", 10**12),
        ("1TB", 10**12),
        ("1KiB", 1024),
        ("8GiB", 8 * 1024**3),
        ("512mib", 512 * 1024**2),
        ("2TiB", 2 * 1024**4),
        ("0.5KiB", 512),
    ],
)
def test_parse_size_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_numbers_and_no_limit() -> None:
    assert parse_size(4096) == 4096
    assert parse_size(10.9) == 10
    assert parse_size(None) is None
    assert parse_size("") is None


@pytest.mark.parametrize("text", ["lots", "12XB", "1e3", "-1", "1.2.3", "GiB", "8 Gi B", "0x10"])
def test_parse_size_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match=r"cannot read .* as a size: use a number with B, KB"):
        parse_size(text)


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.http_port, settings.grpc_port) == ("127.0.0.1", 8080, 50051)
    assert settings.data_path == Path("appdata")
    assert (settings.model_pool_size, settings.rpc_max_workers) == (1, 12)
    assert settings.model_pool_memory is None
    assert settings.max_message_size == 512 * 1024**2
    assert settings.store is None
    assert settings.allow_pickle is False


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELPOD_HTTP_PORT", "9001")
    monkeypatch.setenv("MODELPOD_GRPC_PORT", "0")
    monkeypatch.setenv("MODELPOD_DATA_PATH", str(tmp_path))
    monkeypatch.setenv("MODELPOD_MODEL_POOL_SIZE", "3")
    monkeypatch.setenv("MODELPOD_MODEL_POOL_MEMORY", "8GiB")
    monkeypatch.setenv("MODELPOD_MAX_MESSAGE_SIZE", "1MB")
    monkeypatch.setenv("MODELPOD_SLOW_MS", "2.5")
    monkeypatch.setenv("MODELPOD_ALLOW_PICKLE", "true")
    monkeypatch.setenv("MODELPOD_STORE", "sqlite:///x.db")
    settings = Settings()
    assert (settings.http_port, settings.grpc_port) == (9001, 0)
    assert settings.data_path == tmp_path
    assert settings.model_pool_size == 3
    assert settings.model_pool_memory == 8 * 1024**3
    assert settings.max_message_size == 1_000_000
    assert settings.slow_ms == 2.5
    assert settings.allow_pickle is True
    assert settings.store == "sqlite:///x.db"


def test_variables_without_the_prefix_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PORT", "1234")
    assert Settings().http_port == 8080


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPOD_HTTP_PORT", "9001")
    monkeypatch.setenv("MODELPOD_MODEL_POOL_MEMORY", "1GiB")
    settings = Settings(http_port=9002, model_pool_memory="2GiB")
    assert settings.http_port == 9002
    assert settings.model_pool_memory == 2 * 1024**3
    assert Settings().http_port == 9001  # the environment still holds for what no argument sets


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `modelpod serve` does: each flag given becomes an argument of Settings."""
    monkeypatch.setenv("MODELPOD_GRPC_PORT", "7000")
    monkeypatch.setenv("MODELPOD_HOST", "0.0.0.0")
    arguments = build_parser().parse_args(
        ["serve", "--grpc-port", "7001", "--max-message-size", "2MiB", "m:M"]
    )
    assert (arguments.grpc_port, arguments.host) == ("7001", None)  # flags not given stay None
    settings = Settings(grpc_port=arguments.grpc_port, max_message_size=arguments.max_message_size)
    assert settings.grpc_port == 7001
    assert settings.max_message_size == 2 * 1024**2
    assert settings.host == "0.0.0.0"


@pytest.mark.parametrize("port", ["-1", "65536", "http", "80.5"])
@pytest.mark.parametrize("field", ["http_port", "grpc_port"])
def test_bad_ports_are_refused(monkeypatch: pytest.MonkeyPatch, field: str, port: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: port})
    monkeypatch.setenv(f"MODELPOD_{field.upper()}", port)
    with pytest.raises(ValidationError, match=field):
        Settings()


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_edge_ports_are_accepted(port: int) -> None:
    assert Settings(http_port=port, grpc_port=port).http_port == port


def test_other_validation_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="model_pool_size"):
        Settings(model_pool_size=0)
    with pytest.raises(ValidationError, match="rpc_max_workers"):
        Settings(rpc_max_workers=0)
    with pytest.raises(ValidationError, match="heartbeat_seconds"):
        Settings(heartbeat_seconds=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Settings(http_prot=1)
    monkeypatch.setenv("MODELPOD_MAX_MESSAGE_SIZE", "huge")
    with pytest.raises(ValidationError, match="cannot read 'huge' as a size"):
        Settings()


@pytest.mark.parametrize("value", [True, -5, float("inf"), float("nan")])
def test_parse_size_refuses_python_values_that_are_not_sizes(value: object) -> None:
    with pytest.raises(ValueError, match="non-negative number of bytes"):
        parse_size(value)
