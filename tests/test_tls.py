"""TLS on both transports: a real `modelpod serve` with a certificate signed by a throwaway authority,
reached by modelpod.Client, httpx and grpcio; and the server refusing certificate files it cannot use."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelpod import errors
from modelpod.client import AsyncClient, Client
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc

from conftest import ROOT, ServerProcess, launch, servable

KEY = secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the authority clients trust
    cert: Path  # the server's certificate, for 127.0.0.1 and localhost
    key: Path  # its private key
    other_key: Path  # a key that does not belong to the certificate
    encrypted_key: Path  # the right key, protected by a passphrase the server does not have


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, passphrase: bytes | None = None) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


def make_certificates(folder: Path) -> Certificates:
    """A self-signed authority and a server certificate it signed, valid for a day."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("modelpod test CA"))
        .issuer_name(_name("modelpod test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Certificates(
        folder / "ca.pem",
        folder / "server.pem",
        _write_key(server_key, folder / "server.key"),
        _write_key(ec.generate_private_key(ec.SECP256R1()), folder / "other.key"),
        _write_key(server_key, folder / "encrypted.key", b"passphrase"),
    )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch(
        (servable("Echo"),),
        tmp_path_factory.mktemp("appdata"),
        args=("--tls-cert", str(certificates.cert), "--tls-key", str(certificates.key)),
        env={"MODELPOD_API_KEYS": f"predict:{KEY}"},
    )
    yield process
    process.stop(timeout=15)


def test_the_server_says_it_speaks_tls(server: ServerProcess) -> None:
    assert f"modelpod: HTTP listening on https://127.0.0.1:{server.http_port}" in server.lines
    assert f"modelpod: gRPC listening on 127.0.0.1:{server.grpc_port} (TLS)" in server.lines


@pytest.mark.parametrize("scheme", ["https", "grpcs", "grpc-with-ca"])
def test_client_over_tls(server: ServerProcess, certificates: Certificates, scheme: str) -> None:
    address = {
        "https": f"https://127.0.0.1:{server.http_port}",
        "grpcs": f"grpcs://127.0.0.1:{server.grpc_port}",
        "grpc-with-ca": f"127.0.0.1:{server.grpc_port}",  # a CA alone turns TLS on
    }[scheme]
    with Client(address, model="echo", api_key=KEY, tls_ca=certificates.ca) as echo:
        assert echo.live()
        assert echo.predict(text="secret")["text"] == "secret"


def test_async_client_over_tls(server: ServerProcess, certificates: Certificates) -> None:
    import asyncio

    async def run() -> None:
        for address in (f"https://127.0.0.1:{server.http_port}", f"grpcs://127.0.0.1:{server.grpc_port}"):
            async with AsyncClient(address, model="echo", api_key=KEY, tls_ca=certificates.ca) as echo:
                assert (await echo.predict(text="a"))["text"] == "a"

    asyncio.run(run())


@pytest.mark.parametrize(
    "address", ["https://127.0.0.1:{http}", "grpcs://127.0.0.1:{grpc}"], ids=["https", "grpcs"]
)
def test_a_client_that_does_not_trust_the_authority_is_refused(server: ServerProcess, address: str) -> None:
    where = address.format(http=server.http_port, grpc=server.grpc_port)
    with (
        Client(where, model="echo", api_key=KEY, retries=0, timeout=10) as echo,
        pytest.raises(errors.Unavailable, match=r"(?i)certificate"),
    ):
        echo.predict(text="x")


def test_plaintext_clients_get_nowhere(server: ServerProcess) -> None:
    plain_http = Client(f"http://127.0.0.1:{server.http_port}", model="echo", retries=0, timeout=10)
    with plain_http as echo, pytest.raises(errors.Unavailable):
        echo.live()
    plain_grpc = Client(f"127.0.0.1:{server.grpc_port}", model="echo", retries=0, timeout=10)
    with plain_grpc as echo, pytest.raises(errors.Unavailable):
        echo.live()


def test_httpx_over_tls(server: ServerProcess, certificates: Certificates) -> None:
    verify = ssl.create_default_context(cafile=certificates.ca)
    with httpx.Client(base_url=f"https://127.0.0.1:{server.http_port}", verify=verify, timeout=10) as http:
        assert http.get("/v2/health/live").json() == {"live": True}
        assert http.get("/models").status_code == 401
        models = http.get("/models", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert [m["name"] for m in models] == ["echo"]
        response = http.post(
            "/models/echo/predict", json={"text": "tls"}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert response.json()["text"] == "tls"


def test_grpc_over_tls(server: ServerProcess, certificates: Certificates) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=certificates.ca.read_bytes())
    with grpc.secure_channel(server.grpc_address, credentials) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        metadata = (("authorization", f"Bearer {KEY}"),)
        reply = stub.ModelMetadata(pb.ModelMetadataRequest(name="echo"), metadata=metadata, timeout=10)
        assert reply.name == "echo"


def test_a_missing_ca_file_is_refused() -> None:
    with pytest.raises(ValueError, match="tls_ca must be a PEM file"):
        Client("grpcs://127.0.0.1:1", tls_ca="/no/such/ca.pem")


def serve_once(*args: str, data_path: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MODELPOD_")}
    return subprocess.run(
        [sys.executable, "-m", "modelpod", "serve", servable("Echo"), "--http-port", "0",
         "--grpc-port", "0", "--data-path", str(data_path), *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip


def test_unusable_tls_files_stop_the_server(certificates: Certificates, tmp_path: Path) -> None:
    cases = [
        (("--tls-cert", str(certificates.cert)), "TLS needs both a certificate and its key"),
        (
            ("--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(certificates.key)),
            "cannot read the TLS certificate",
        ),
        (
            ("--tls-cert", str(certificates.cert), "--tls-key", str(certificates.other_key)),
            f"cannot use the TLS certificate {certificates.cert} with the key {certificates.other_key}",
        ),
        (
            ("--tls-cert", str(certificates.key), "--tls-key", str(certificates.key)),
            "cannot use the TLS certificate",
        ),
        (
            ("--tls-cert", str(certificates.cert), "--tls-key", str(certificates.encrypted_key)),
            "(and not encrypted)",
        ),
    ]
    for args, message in cases:
        done = serve_once(*args, data_path=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert message in done.stderr
        assert "listening" not in done.stdout


def test_a_remote_model_reaches_a_tls_server_it_found_in_the_store(
    certificates: Certificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelpod import Store

    from servable import Echo

    store = Store(data_path=tmp_path, heartbeat_timeout=30)
    echo = Echo(data_path=tmp_path / "work")
    echo.initialize(colour="green")
    store.apply(echo)
    tls = ("--tls-cert", str(certificates.cert), "--tls-key", str(certificates.key))
    server = launch(
        (), tmp_path / "served", args=(*tls, "--store", store.url, "--model", "echo"),
        env={"MODELPOD_API_KEYS": f"predict:{KEY}", "PYTHONPATH": str(ROOT / "tests")},
    )  # fmt: skip
    try:
        monkeypatch.setenv("MODELPOD_API_KEY", KEY)
        monkeypatch.setenv("MODELPOD_TLS_CA", str(certificates.ca))
        proxy = store.load("echo")
        assert proxy.predict(text="sealed")["config"] == {"colour": "green"}
        assert proxy.route == f"remote grpcs://127.0.0.1:{server.grpc_port}"
        recorded = {e.protocol: e.address for e in store.endpoints("echo", "1")}
        assert recorded == {
            "grpc": f"grpcs://127.0.0.1:{server.grpc_port}",
            "http": f"https://127.0.0.1:{server.http_port}",
        }
    finally:
        server.stop(timeout=15)
