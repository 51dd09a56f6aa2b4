"""Three `blaze serve` replicas behind one client, on 127.0.0.1: calls balance across them, a
replica killed mid-load costs only the calls it had admitted, and a rolling restart under a
mixed unary and streaming load loses none."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from blazerpc import BlazeClient, BlazeRPCError, SyncBlazeClient

from .processes import sample, scrape
from .replicas import Replicas


async def test_every_replica_serves_an_even_share() -> None:
    with Replicas(3) as replicas:
        pids = {p.pid for p in replicas.procs}
        async with BlazeClient(replicas.addresses) as client:
            # Connecting to three servers takes a moment: start counting once all have answered.
            seen: set[int] = set()
            while seen != pids:
                seen.add(await client.predict("pid"))

            async def calls(n: int) -> list[int]:
                return [await client.predict("pid") for _ in range(n)]

            served = collections.Counter(
                pid for batch in await asyncio.gather(*[calls(100) for _ in range(30)])
                for pid in batch
            )  # fmt: skip
        # The blocking client balances the same way.
        with SyncBlazeClient(replicas.addresses) as sync_client:
            by_sync = collections.Counter(sync_client.predict("pid") for _ in range(300))
    assert sum(served.values()) == 3000
    assert set(served) == pids
    assert all(750 <= n <= 1250 for n in served.values()), served  # within 25% of 1000
    assert set(by_sync) == pids and all(n >= 50 for n in by_sync.values()), by_sync


@dataclass
class Load:
    """Calls made by a steady load, with when each ended and how."""

    ok: list[float] = field(default_factory=list)
    failed: list[tuple[float, grpc.StatusCode | None, str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def loop(self, call: Callable[[], Awaitable[object]], pause: float = 0.0) -> None:
        while not self.stop.is_set():
            try:
                await call()
            except BlazeRPCError as exc:
                self.failed.append((time.monotonic(), exc.code, exc.details))
            else:
                self.ok.append(time.monotonic())
            await asyncio.sleep(pause)


async def test_a_killed_replica_costs_only_the_calls_it_had_admitted() -> None:
    """Calls the victim had admitted fail (never retried elsewhere: the model may have run);
    every other call, including those sent to it as it died, succeeds."""
    with Replicas(3, metrics=True) as replicas:
        async with BlazeClient(replicas.addresses) as client:
            load = Load()
            loops = 9
            workers = [
                asyncio.create_task(load.loop(lambda: client.predict("slow", seconds=0.02)))
                for _ in range(loops)
            ]
            held = [
                asyncio.ensure_future(client.predict("slow-sync", seconds=3.0)) for _ in range(9)
            ]

            def held_on(i: int) -> float:
                metrics = scrape(replicas.metrics_ports[i])
                return sample(metrics, "blazerpc_in_flight", model="slow-sync")

            await asyncio.sleep(1.0)
            counts = [await asyncio.to_thread(held_on, i) for i in range(3)]
            assert sum(counts) == 9, counts
            victim = max(range(3), key=counts.__getitem__)
            os.kill(replicas.procs[victim].pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await asyncio.sleep(1.5)
            load.stop.set()
            await asyncio.gather(*workers)
            outcomes = await asyncio.gather(*held, return_exceptions=True)

    failed_held = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed_held) == counts[victim] >= 1, (counts, outcomes)
    assert all(isinstance(e, BlazeRPCError) for e in failed_held), failed_held
    assert {e.code for e in failed_held} == {grpc.StatusCode.UNAVAILABLE}, failed_held
    assert outcomes.count("done") == 9 - counts[victim]
    # The short calls: at most one in flight per loop, and only those on the victim could fail.
    assert len(load.failed) <= loops, load.failed
    assert all(at - killed_at < 0.5 for at, _, _ in load.failed), load.failed
    assert len([t for t in load.ok if t > killed_at + 0.5]) > 20  # the survivors kept serving


async def test_a_rolling_restart_under_mixed_load_fails_no_call() -> None:
    """SIGTERM each replica in turn and start its successor, while unary and streaming calls
    keep coming; the replicas also end their connections every second (max connection age),
    so the client reconnects throughout."""
    age = ("--max-connection-age", "1", "--max-connection-age-grace", "5", "--grace-period", "5")
    with Replicas(3, *age) as replicas:
        old = {p.pid for p in replicas.procs}
        pids: collections.Counter[int] = collections.Counter()
        streams: list[list[int]] = []

        async with BlazeClient(replicas.addresses) as client:

            async def unary() -> None:
                pids[await client.predict("pid")] += 1

            async def stream() -> None:
                streams.append([i async for i in client.stream("count", n=5, delay=0.02)])

            load = Load()
            # Paced, so that the successors, importing on the same two cores, start in seconds.
            workers = [asyncio.create_task(load.loop(unary, 0.01)) for _ in range(4)]
            workers += [asyncio.create_task(load.loop(stream)) for _ in range(4)]
            await asyncio.sleep(0.5)
            statuses = []
            for i in range(3):
                statuses.append(await asyncio.to_thread(replicas.restart, i))
                successor = replicas.procs[i].pid
                deadline = time.monotonic() + 10
                while pids[successor] == 0:  # as a rollout waits for the new pod to serve
                    assert time.monotonic() < deadline, f"replica {i}'s successor got no calls"
                    await asyncio.sleep(0.05)
            load.stop.set()
            await asyncio.gather(*workers)
            new = {p.pid for p in replicas.procs}

    assert load.failed == []
    assert statuses == [0, 0, 0]  # each drained and exited cleanly
    assert all(chunks == [0, 1, 2, 3, 4] for chunks in streams)
    assert len(streams) > 20 and len(load.ok) > 100
    assert old <= set(pids) and new <= set(pids), (old, new, pids)
