"""Three replicas behind one BlazeClient: share per replica, and what a rolling restart costs.

Three `blaze serve` processes on 127.0.0.1, one port each (as pods behind a headless
Service), and one client balancing over all three (gRPC round_robin, see
src/blazerpc/balancing.py) under a steady, paced load of unary and streaming calls. Rounds
alternate a steady phase with a rolling restart (SIGTERM each replica in turn, start its
successor on the same port, wait until it serves). The load comes from a Python client on
purpose: what is measured is that client's balancing and retries, which h2load, talking to
one address, cannot exercise. With two cores this measures balance and loss, not scaling.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import time
from dataclasses import dataclass, field

import harness

sys.path.insert(0, str(harness.ROOT))

from blazerpc import BlazeClient, BlazeRPCError
from tests.replicas import Replicas


@dataclass
class Phase:
    """What the load saw during one phase."""

    kind: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    streams: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    served: collections.Counter[int] = field(default_factory=collections.Counter)

    def percentile(self, q: float) -> float:
        return statistics.quantiles(self.latencies, n=1000)[int(q * 10) - 1] * 1000


async def run_phase(
    client: BlazeClient, replicas: Replicas, kind: str, args: argparse.Namespace
) -> Phase:
    phase = Phase(kind)
    stop = asyncio.Event()

    async def unary() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                pid = await client.predict("pid")
            except BlazeRPCError as exc:
                phase.failed[exc.code.name if exc.code else "?"] += 1
            else:
                phase.latencies.append(time.perf_counter() - start)
                phase.served[pid] += 1
            await asyncio.sleep(args.pause)

    async def stream() -> None:
        while not stop.is_set():
            try:
                chunks = [i async for i in client.stream("count", n=5, delay=0.02)]
            except BlazeRPCError as exc:
                phase.failed[f"stream {exc.code.name if exc.code else '?'}"] += 1
            else:
                if chunks != [0, 1, 2, 3, 4]:
                    phase.failed["stream incomplete"] += 1
                phase.streams += 1

    began = time.monotonic()
    loops = [asyncio.create_task(unary()) for _ in range(args.unary)]
    loops += [asyncio.create_task(stream()) for _ in range(args.streams)]
    if kind == "steady":
        await asyncio.sleep(args.steady)
    else:
        for i in range(len(replicas.ports)):
            await asyncio.to_thread(replicas.restart, i)
            successor, deadline = replicas.procs[i].pid, time.monotonic() + 30
            while phase.served[successor] == 0:  # as a rollout waits for the new pod
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {i}'s successor got no calls in 30 s")
                await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*loops)
    phase.seconds = time.monotonic() - began
    return phase


async def measure(args: argparse.Namespace) -> list[Phase]:
    phases = []
    with Replicas(3, "--grace-period", "5") as replicas:
        async with BlazeClient(replicas.addresses) as client:
            pids = {p.pid for p in replicas.procs}
            seen: set[int] = set()
            while seen != pids:  # warm-up: every replica connected
                seen.add(await client.predict("pid"))
            for _ in range(args.rounds):
                for kind in ("steady", "rolling"):
                    phase = await run_phase(client, replicas, kind, args)
                    print(
                        f"{kind:8} {phase.seconds:5.1f}s calls={len(phase.latencies)} "
                        f"streams={phase.streams} failed={sum(phase.failed.values())} "
                        f"p99={phase.percentile(99):.1f}ms",
                        file=sys.stderr,
                    )
                    phases.append(phase)
    return phases


def report(phases: list[Phase], args: argparse.Namespace) -> str:
    rows = []
    for kind in ("steady", "rolling"):
        mine = [p for p in phases if p.kind == kind]
        p50 = statistics.median(p.percentile(50) for p in mine)
        p99 = statistics.median(p.percentile(99) for p in mine)
        failed = sum(sum(p.failed.values()) for p in mine)
        rows.append(
            [
                f"**{kind}**",
                f"{statistics.median(p.seconds for p in mine):.1f}",
                f"{sum(len(p.latencies) for p in mine):,}",
                f"{sum(p.streams for p in mine):,}",
                str(failed),
                f"{p50:.2f}",
                f"{p99:.2f}",
                ", ".join(f"{p.percentile(99):.1f}" for p in mine),
            ]
        )
    steady = [p for p in phases if p.kind == "steady"]
    shares = []
    for p in steady:
        total = sum(p.served.values())
        shares.append(" / ".join(f"{100 * n / total:.1f}%" for n in sorted(p.served.values())))
    p99_ratio = statistics.median(
        r.percentile(99) / s.percentile(99) for s, r in zip(phases[::2], phases[1::2], strict=True)
    )
    failures = collections.Counter()
    for p in phases:
        failures.update(p.failed)
    lines = [
        harness.section_header("Three replicas: balance and rolling restarts", []).removesuffix(
            "\n- servers:"
        ),
        "",
        f"Three `blaze serve tests.apps.production_app:app --grace-period 5` replicas on "
        f"127.0.0.1 and one `BlazeClient([three addresses])` in the benchmark process: "
        f"{args.unary} unary loops (`pid`, {args.pause * 1000:.0f} ms pause between calls) and "
        f"{args.streams} streaming loops (`count`, 5 chunks 20 ms apart). {args.rounds} rounds, "
        f"each a steady phase of {args.steady:.0f} s then a rolling restart of all three "
        "replicas (SIGTERM, successor on the same port, next once it serves). The machine was "
        "shared with other work while this ran; two cores measure balance and loss, not "
        "scaling. Latency: unary calls, in the client, retries included (a call the draining "
        "replica refused is retried on another). The rolling phase also includes three "
        "successors importing and starting on the same two cores.",
        "",
        harness.markdown_table(
            [
                "phase",
                "seconds (median)",
                "unary calls",
                "streams",
                "failed calls",
                "p50 ms (median)",
                "p99 ms (median)",
                "p99 ms per round",
            ],
            rows,
        ),
        "",
        f"- share of unary calls per replica, each steady phase: {'; '.join(shares)} (even: 33.3%)",
        f"- p99 during a rolling restart ÷ steady p99 (median over rounds): {p99_ratio:.2f}x",
        f"- failed calls by status, all phases: {dict(failures) or 'none'}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steady", type=float, default=8.0, help="seconds of steady load")
    parser.add_argument("--unary", type=int, default=4, help="unary call loops")
    parser.add_argument("--streams", type=int, default=2, help="streaming call loops")
    parser.add_argument("--pause", type=float, default=0.005, help="seconds between unary calls")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()
    body = report(asyncio.run(measure(args)), args)
    if args.no_write:
        print(body)
    else:
        harness.write_section("replicas", body)


if __name__ == "__main__":
    main()
