"""Client targets (addresses, lists, dns:///) and the server's max connection age."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from typer.testing import CliRunner

from blazerpc import BlazeApp, BlazeClient, Context, SyncBlazeClient
from blazerpc.balancing import ADMISSION_HEADERS, channel_target
from blazerpc.cli import cli
from blazerpc.server.server import Limits

from .support import running


def test_targets() -> None:
    assert channel_target("10.0.0.1", None) == "10.0.0.1:50051"
    assert channel_target("model.internal", 7000) == "model.internal:7000"
    assert channel_target("::1", 7000) == "[::1]:7000"
    dns = "dns:///model.ns.svc.cluster.local:50051"
    assert channel_target(dns, None) == dns
    assert channel_target(["10.0.0.1:1", "10.0.0.2:2"], None) == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert channel_target(["[::1]:1", "[fe80::1]:2"], None) == "ipv6:[::1]:1,[fe80::1]:2"
    resolved = channel_target(["localhost:5"], None)  # names in a list are resolved now
    assert resolved in ("ipv4:127.0.0.1:5", "ipv6:[::1]:5")


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("dns:///m:1", 50051, "is a target with its own port; do not pass port"),
        (["10.0.0.1:1"], 50051, "gives a port in each, as 'HOST:PORT'"),
        ([], None, "empty"),
        (["10.0.0.1"], None, "not of the form HOST:PORT"),
        (["10.0.0.1:1", "[::1]:2"], None, "mix IPv4 and IPv6"),
        (["no-such-host.invalid:1"], None, "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_bad_targets_are_refused_clearly(
    host: str | list[str], port: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        BlazeClient(host, port)


async def test_both_clients_call_through_a_list_and_a_dns_target() -> None:
    app = BlazeApp()

    @app.model("echo")
    async def echo(text: str) -> str:
        return text

    async with running(app) as server:
        addresses = [f"127.0.0.1:{server.port}"] * 2
        async with BlazeClient(f"dns:///127.0.0.1:{server.port}") as client:
            assert await client.predict("echo", text="dns") == "dns"
        async with BlazeClient(addresses) as client:
            assert await client.predict("echo", text="list") == "list"

        def sync_call() -> str:
            with SyncBlazeClient(addresses) as client:
                return client.predict("echo", text="sync")

        assert await asyncio.to_thread(sync_call) == "sync"


async def test_max_connection_age_makes_clients_reconnect_without_failing_calls() -> None:
    """Each call tells which client connection it came on; an aged connection ends (GOAWAY)
    and the client opens another, while a stream outliving the age still completes."""
    app = BlazeApp()
    app.limits = replace(app.limits, max_connection_age_s=0.3, max_connection_age_grace_s=5)

    @app.model("peer")
    async def peer(ctx: Context) -> str:
        return ctx.peer

    @app.model("ticks", streaming=True)
    async def ticks(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0.1)
            yield i

    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        stream = asyncio.ensure_future(_collect(client.stream("ticks", n=10)))
        peers = set()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            peers.add(await client.predict("peer"))
            await asyncio.sleep(0.02)
        assert await stream == list(range(10))  # 1 s, past the 0.3 s age: the grace covers it
    assert len(peers) >= 3, peers


async def _collect(chunks: AsyncIterator[int]) -> list[int]:
    return [c async for c in chunks]


def test_connection_age_and_keepalive_flags_become_server_options() -> None:
    limits = Limits(max_connection_age_s=300, max_connection_age_grace_s=30, keepalive_time_s=15)
    options = dict(limits.grpc_options(reuse_port=False))
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    assert options["grpc.keepalive_time_ms"] == 15_000
    assert "grpc.max_connection_age_ms" not in dict(Limits().grpc_options(reuse_port=False))

    result = CliRunner().invoke(cli, ["serve", "app:app", "--max-connection-age-grace", "5"])
    assert result.exit_code == 2
    assert "--max-connection-age-grace needs --max-connection-age" in result.output


async def test_headers_on_admission_only_for_clients_that_ask() -> None:
    """A call with the admission metadata gets its headers before the model has produced
    anything (gRPC then never retries it); a stock call gets them with the first answer.
    Watched on a stream: grpcio's asyncio unary calls only surface headers at the end."""
    app = BlazeApp()
    release = asyncio.Event()

    @app.model("wait", streaming=True)
    async def wait(x: int) -> AsyncIterator[int]:
        await release.wait()
        yield x

    async with running(app) as server:
        request = app.schema.request_class(app.registry.get("wait").rpc)(x=1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            method = channel.unary_stream("/blazerpc.InferenceService/PredictWait")
            asks = method(request.SerializeToString(), metadata=[ADMISSION_HEADERS])
            stock = method(request.SerializeToString())
            await asyncio.wait_for(asks.initial_metadata(), 5)  # while the model waits
            headers_of_stock = asyncio.ensure_future(stock.initial_metadata())
            await asyncio.sleep(0.3)
            assert not headers_of_stock.done()
            release.set()
            await asyncio.wait_for(headers_of_stock, 5)
            assert len([m async for m in asks]) == len([m async for m in stock]) == 1
