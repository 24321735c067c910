"""TLS for both edges from one PEM certificate (chain) and its private key."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from modelpod.server.settings import Settings


@dataclass(frozen=True)
class TLSFiles:
    """A certificate and key that were read and checked to belong together."""

    cert: Path
    key: Path
    cert_pem: bytes
    key_pem: bytes

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)])


def load_tls(settings: Settings) -> TLSFiles | None:
    """The TLS files of the settings, checked now so that a bad pair stops the server before it
    listens, with a message naming the file; None when TLS is not asked for."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    cert, key = settings.tls_cert, settings.tls_key
    cert_pem, key_pem = _read(cert, "certificate"), _read(key, "key")
    try:
        # A password that is never right: an encrypted key fails here instead of prompting on a terminal.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as error:
        raise ValueError(
            f"cannot use the TLS certificate {cert} with the key {key}: {error.reason or 'unreadable PEM'}; "
            "both must be PEM, and the key must be the certificate's (and not encrypted)"
        ) from None
    return TLSFiles(cert, key, cert_pem, key_pem)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the TLS {what} {path}: {error.strerror}") from None
