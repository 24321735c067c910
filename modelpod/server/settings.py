"""Server settings: `MODELPOD_*` environment variables, overridden by CLI flags and arguments."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelpod.observe.capture import parse_capture

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int | None:
    """'8GiB', '512MB', '1.5g' or a plain number of bytes; empty or None means no limit."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or (isinstance(value, int | float) and not 0 <= value < float("inf")):
        raise ValueError(f"a size must be a non-negative number of bytes, not {value!r}")
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE.match(str(value))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a size: use a number with B, KB, MB, GB, KiB, MiB or GiB")
    return int(float(match.group(1)) * _UNITS[unit])


ByteSize = Annotated[int | None, BeforeValidator(parse_size)]


class Settings(BaseSettings):
    """Everything a server can be told. Each field is `MODELPOD_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MODELPOD_", extra="forbid", protected_namespaces=())

    host: str = Field("127.0.0.1", description="address both servers bind to")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP port (0: any free port)")
    grpc_port: int = Field(
        50051, ge=0, le=65535, description="gRPC port (0: any free port; -1 is not allowed)"
    )
    data_path: Path = Field(
        Path("appdata"), description="where model instances keep model_info and model_dir"
    )
    model_pool_size: int = Field(1, ge=1, description="loaded versions kept per model (LRU)")
    model_pool_memory: ByteSize = Field(None, description="memory budget for all loaded instances, e.g. 8GiB")
    rpc_max_workers: int = Field(12, ge=1, description="threads that run model code")
    drain_timeout: float = Field(30.0, ge=0, description="seconds to finish in-flight requests on shutdown")
    max_message_size: ByteSize = Field(512 * 1024**2, description="largest request or response, e.g. 512MiB")
    max_parsed_size: ByteSize = Field(
        64 * 1024**2,
        description="largest body parsed as JSON or msgpack (for V2 binary, its JSON header): parsing "
        "holds the interpreter lock, so a larger one would stall every other request; larger: 413. "
        "Send big tensors with the binary extension",
    )
    body_timeout: float = Field(
        60.0, gt=0, description="seconds a request body may take to arrive; slower: 408, connection closed"
    )
    max_header_size: ByteSize = Field(
        64 * 1024, description="largest HTTP request head (request line and headers); larger: 431, closed"
    )
    keep_alive_timeout: float = Field(
        5.0,
        gt=0,
        description="seconds an HTTP connection may wait for a request's complete head, when new or "
        "idle between requests, before it is closed",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="open connections served on each of HTTP and gRPC; over it, HTTP requests get 503 "
        "(health probes still answered) and gRPC refuses new connections",
    )
    max_request_rows: int | None = Field(
        None,
        ge=1,
        description="rows one tensor request may carry to a keyword-argument model, a call "
        "each (else the model's max_queue_size, at least its max_batch_size)",
    )
    max_request_elements: int | None = Field(
        None,
        ge=1,
        description="values one tensor request may claim, a zero dimension counted as one "
        "(else max_message_size)",
    )
    max_request_decoded_bytes: ByteSize = Field(
        None,
        description="memory one tensor request may take decoded, as its model gets it, e.g. 1GiB "
        "(else max_message_size)",
    )
    slow_ms: float = Field(1000.0, ge=0, description="requests slower than this are logged as warnings")
    inline_ms: float = Field(
        1.0,
        ge=0,
        description="a lone request to a model whose single computes stay under this many ms runs on "
        "the event loop, with no thread hop, as does every request to a model that does not batch "
        "whose computes average under an eighth of it in CPU time; 0: never",
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="the event loop: asyncio's own, or uvloop (gRPC about 7 percent faster; HTTP no "
        "faster, and connections starved under full load: p99 10x worse)",
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    log_format: Literal["text", "json"] = Field("text", description="text, or json: one object per line")
    otel: bool = Field(
        False,
        description="OpenTelemetry traces over OTLP, configured by the OTEL_* variables "
        "(needs the otel extra)",
    )
    capture: str | None = Field(
        None,
        description="payload capture: a share of each model's requests written with their inputs and "
        "outputs, MODEL=RATE[+errors] separated by ';' (* for every model), e.g. iris=0.1+errors",
    )
    capture_path: Path | None = Field(
        None, description="where captures are written (else _capture under the data path)"
    )
    capture_store: str | None = Field(
        None,
        description="write captures to this database instead (a store URL: sqlite:///..., postgresql://...)",
    )
    capture_queue_size: int = Field(
        1000, ge=1, description="captured requests waiting to be written; beyond it they are dropped, counted"
    )
    capture_max_value_size: ByteSize = Field(
        64 * 1024, description="largest array or bytes value kept in a capture; larger: stored as its size"
    )
    capture_file_size: ByteSize = Field(64 * 1024**2, description="a capture file past it is rotated")
    capture_files: int = Field(10, ge=1, description="capture files kept per model (the oldest go)")
    capture_drop: str | None = Field(
        None, description="input or output fields never captured, comma-separated"
    )
    max_batch_size: int | None = Field(
        None, ge=1, description="rows per batch, for every model (else its own)"
    )
    max_batch_delay_ms: float | None = Field(
        None, ge=0, description="how long a non-full batch may wait (else the model's)"
    )
    max_queue_size: int | None = Field(
        None, ge=1, description="rows that may wait per version (else the model's)"
    )
    workers: int | None = Field(
        None, ge=0, description="worker processes per model (0: threads here; else each model's own)"
    )
    model_timeout: float | None = Field(
        None, gt=0, description="seconds a model call may run before it is abandoned"
    )
    store: str | None = Field(None, description="a Store's database URL, to serve models from it (--model)")
    heartbeat_seconds: float = Field(5.0, gt=0, description="how often a server tells the store it is alive")
    repository: Path | None = Field(
        None,
        description="serve the model files of this folder: NAME/VERSION/FILE (Triton's layout), "
        "NAME/FOLDER, FILE",
    )
    repository_poll: float = Field(
        0.0,
        ge=0,
        description="seconds between looks at --repository for new, changed and removed models (0: none)",
    )
    allow_pickle: bool = Field(
        False, description="allow store models kept pickled and pickled model files (loading runs their code)"
    )
    api_keys: SecretStr | None = Field(
        None,
        description="API keys as ROLE:KEY pairs, comma-separated; ROLE is predict or admin "
        "(none: no authentication; prefer this variable or a key file to the flag, which ps shows)",
    )
    api_key_file: Path | None = Field(
        None, description="a file of ROLE:KEY lines (# comments), added to the API keys"
    )
    traffic: str | None = Field(
        None,
        description="traffic policies at start, MODEL=VERSION:WEIGHT,...[+sticky][+shadow=VERSION@SHARE] "
        "separated by ';', e.g. iris=1:90,2:10 (a policy an admin saved since is kept until this changes)",
    )
    shadow_max_in_flight: int = Field(
        4,
        ge=1,
        le=10_000,
        description="shadow requests of one model running at once; more are shed, "
        "never queued (each takes a model thread)",
    )
    quotas: str | None = Field(
        None,
        description="quotas per caller (an API key's name=NAME, else its traffic key), "
        "CALLER[@MODEL]=rate:R,burst:B,concurrency:C separated by ';', CALLER * for any other; "
        "e.g. alice=rate:10,burst:20;*=concurrency:4",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate (chain): serve HTTPS and gRPC over TLS")
    tls_key: Path | None = Field(None, description="PEM private key of the TLS certificate")

    @field_validator("capture")
    @classmethod
    def _capture_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_capture(value)  # a mistake stops the server before it starts
        return value

    @model_validator(mode="after")
    def _tls_needs_both_files(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and its key: give --tls-cert and --tls-key")
        return self
