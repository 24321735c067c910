"""What a client proves and checks: the API key it sends, and the certificate authority it trusts.

    HTTP   https://host:port verifies the server against `tls_ca` (a PEM file), else the system's CAs
    gRPC   grpcs://host:port, or host:port with `tls_ca` given, speaks TLS; host:port alone does not

The key travels as `Authorization: Bearer KEY` (HTTP) or `authorization` metadata (gRPC); it
defaults to the `MODELPOD_API_KEY` environment variable, and `tls_ca` to `MODELPOD_TLS_CA` (so that
a `RemoteModel`, whose clients are made for it, reaches servers whose certificates that CA signed).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

API_KEY_VARIABLE = "MODELPOD_API_KEY"
TLS_CA_VARIABLE = "MODELPOD_TLS_CA"


@dataclass(frozen=True, repr=False)  # no repr: a key must not end up in a log by accident
class Security:
    """An API key to send (or None), and whether and how to verify the server's TLS certificate."""

    api_key: str | None = None
    tls: bool = False
    tls_ca: Path | None = None

    @classmethod
    def of(cls, api_key: str | None, tls: bool, tls_ca: str | os.PathLike[str] | None) -> Security:
        """The key and CA given, else the environment's; TLS when asked for or when a CA is given.
        (A CA from the environment only serves addresses that ask for TLS themselves.)"""
        key = api_key if api_key is not None else os.environ.get(API_KEY_VARIABLE) or None
        if tls_ca is None and tls:
            tls_ca = os.environ.get(TLS_CA_VARIABLE) or None
        ca = Path(tls_ca) if tls_ca is not None else None
        if ca is not None and not ca.is_file():
            raise ValueError(f"tls_ca must be a PEM file of the certificate authority; {ca} is not a file")
        return cls(key, tls or ca is not None, ca)

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.headers().items())

    def http_verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify`: the given CA, else the system's (used only for https:// addresses)."""
        return ssl.create_default_context(cafile=self.tls_ca) if self.tls_ca is not None else True

    def grpc_credentials(self) -> grpc.ChannelCredentials | None:
        """Channel credentials for TLS, or None for a plaintext channel."""
        if not self.tls:
            return None
        roots = self.tls_ca.read_bytes() if self.tls_ca is not None else None
        return grpc.ssl_channel_credentials(root_certificates=roots)
