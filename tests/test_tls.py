"""TLS and mutual TLS with a CA and certificates generated for the test (trustme)."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme

from blazerpc import (
    BlazeApp,
    BlazeClient,
    BlazeRPCError,
    ClientTLS,
    ServerTLS,
    StatusCode,
    SyncBlazeClient,
)

from .processes import BLAZE, ROOT, blaze_serve, exits_within, wait_serving
from .support import free_port


@dataclass(frozen=True)
class Pki:
    ca: str  # the CA that signed the server and the trusted client
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA nobody here trusts
    stranger_cert: str  # a client certificate signed by other_ca
    stranger_key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()

    def write(name: str, blob: trustme.Blob | list[trustme.Blob]) -> str:
        path = d / name
        blobs = blob if isinstance(blob, list) else [blob]
        path.write_bytes(b"".join(b.bytes() for b in blobs))
        return str(path)

    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.example")
    stranger = other.issue_cert("stranger.example")
    return Pki(
        ca=write("ca.pem", ca.cert_pem),
        server_cert=write("server.pem", server.cert_chain_pems),
        server_key=write("server.key", server.private_key_pem),
        client_cert=write("client.pem", client.cert_chain_pems),
        client_key=write("client.key", client.private_key_pem),
        other_ca=write("other-ca.pem", other.cert_pem),
        stranger_cert=write("stranger.pem", stranger.cert_chain_pems),
        stranger_key=write("stranger.key", stranger.private_key_pem),
    )


def echo_app() -> BlazeApp:
    app = BlazeApp()

    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    return app


async def outcome(port: int, tls: bool | ClientTLS) -> StatusCode:
    async with BlazeClient("127.0.0.1", port, tls=tls, timeout=5) as client:
        try:
            assert await client.predict("echo", text="secret") == "secret"
        except BlazeRPCError as exc:
            return exc.code
    return StatusCode.OK


async def test_tls_handshake_needs_the_right_ca(pki: Pki) -> None:
    server = await echo_app().start(port=0, tls=ServerTLS(pki.server_cert, pki.server_key))
    try:
        assert await outcome(server.port, ClientTLS(ca_file=pki.ca)) is StatusCode.OK
        assert await outcome(server.port, ClientTLS(ca_file=pki.other_ca)) is (
            StatusCode.UNAVAILABLE
        )
        assert await outcome(server.port, False) is StatusCode.UNAVAILABLE  # plaintext

        def sync_call() -> str:  # in a thread: the server runs on this test's event loop
            with SyncBlazeClient("127.0.0.1", server.port, tls=ClientTLS(ca_file=pki.ca)) as c:
                return c.predict("echo", text="sync")

        assert await asyncio.to_thread(sync_call) == "sync"
    finally:
        await server.stop(1)


async def test_mutual_tls_needs_a_client_certificate_from_the_trusted_ca(pki: Pki) -> None:
    tls = ServerTLS(pki.server_cert, pki.server_key, client_ca_file=pki.ca)
    server = await echo_app().start(port=0, tls=tls)
    try:
        trusted = ClientTLS(pki.ca, pki.client_cert, pki.client_key)
        assert await outcome(server.port, trusted) is StatusCode.OK
        no_cert = ClientTLS(ca_file=pki.ca)
        assert await outcome(server.port, no_cert) is StatusCode.UNAVAILABLE
        stranger = ClientTLS(pki.ca, pki.stranger_cert, pki.stranger_key)
        assert await outcome(server.port, stranger) is StatusCode.UNAVAILABLE
    finally:
        await server.stop(1)


async def test_blaze_serve_with_tls_flags(pki: Pki) -> None:
    port = free_port()
    with blaze_serve(
        "--port",
        str(port),
        "--tls-cert",
        pki.server_cert,
        "--tls-key",
        pki.server_key,
        "--tls-client-ca",
        pki.ca,
    ) as proc:
        probe = grpc.ssl_channel_credentials(
            Path(pki.ca).read_bytes(),
            Path(pki.client_key).read_bytes(),
            Path(pki.client_cert).read_bytes(),
        )
        wait_serving(port, proc, credentials=probe)
        assert await outcome(port, ClientTLS(pki.ca, pki.client_cert, pki.client_key)) is (
            StatusCode.OK
        )
        assert await outcome(port, ClientTLS(ca_file=pki.ca)) is StatusCode.UNAVAILABLE
        assert await outcome(port, ClientTLS(ca_file=pki.other_ca)) is StatusCode.UNAVAILABLE
        assert await outcome(port, False) is StatusCode.UNAVAILABLE
        proc.send_signal(signal.SIGTERM)
        assert exits_within(proc, 10) == 0


def test_blaze_serve_refuses_a_key_without_a_certificate() -> None:
    done = subprocess.run(
        [BLAZE, "serve", "tests.apps.production_app:app", "--tls-key", "k.pem"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--tls-cert and --tls-key" in done.stderr


def http_outcome(port: int, scheme: str, context: ssl.SSLContext | None) -> str:
    """How a KServe REST inference call on the HTTP port ends: its HTTP status, or the name
    of the error that kept it from being answered."""
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["secret"]}]}
    ).encode()
    url = f"{scheme}://127.0.0.1:{port}/v2/models/echo/infer"
    try:
        with urllib.request.urlopen(url, body, timeout=5, context=context) as reply:
            assert json.loads(reply.read())["outputs"][0]["data"] == ["secret"]
            return str(reply.status)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__


async def test_the_http_port_requires_the_same_tls_and_client_certificate(pki: Pki) -> None:
    """A call refused on the gRPC port for want of a client certificate is refused on the
    HTTP port too: no port is a plaintext way around mutual TLS."""
    tls = ServerTLS(pki.server_cert, pki.server_key, client_ca_file=pki.ca)
    server = await echo_app().start(port=0, tls=tls, http_port=0)
    trusted = ssl.create_default_context(cafile=pki.ca)
    trusted.load_cert_chain(pki.client_cert, pki.client_key)
    no_cert = ssl.create_default_context(cafile=pki.ca)
    try:
        port = server.http_port
        assert await asyncio.to_thread(http_outcome, port, "https", trusted) == "200"
        assert await asyncio.to_thread(http_outcome, port, "https", no_cert) != "200"
        assert await asyncio.to_thread(http_outcome, port, "http", None) != "200"
        assert await outcome(server.port, ClientTLS(ca_file=pki.ca)) is StatusCode.UNAVAILABLE
    finally:
        await server.stop(1)
