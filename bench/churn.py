"""Churn: many endpoints held by leases that keep being renewed, and DNS while they are.

On each backend: ``--leases`` leases (ttl ``LEASE_TTL``) each holding ``--endpoints /
--leases`` endpoints of a ClusterIP service of its own, registered as whole endpoint sets.
Then, for ``--hold`` seconds, dnsperf asks the services' names in windows of ``--window``
seconds, alternating windows in which the leases are renewed at the steady rate (each once per
``--renew-every`` seconds of renewing, spread evenly) with windows without renewals. A renewal
changes no answer, so DNS should not notice: the figure is the median QPS of the windows with
renewals over the median of those without. At the end every lease must still hold all its
endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import cast

import aiohttp

from bench.freshness import _backend_flags
from bench.qps import Server, dnsperf, vip
from bench.report import median, pin_to_server_core, table, write_section
from tests.helpers.support import SdnsProcess

ZONE = "svc.cluster.local"
# Renewals pause in every other window, so a lease waits about twice ``--renew-every`` between
# two: a ttl of three times that is the margin a sidekick renewing every 10 s with a ttl of 30
# s would have. With 30 s here, the wait came within seconds of the ttl.
LEASE_TTL = 60
RENEWING_CONNECTIONS = 32
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


async def _register(base: str, leases: int, per_lease: int,
                    made: list[tuple[str, float]]) -> None:
    """The leases, each holding the endpoints of service ``churn-<i>``; their ids and when
    they were made go into ``made`` as they are made, for the renewer that runs meanwhile."""
    async with aiohttp.ClientSession(base) as session:
        async def one(i: int) -> str:
            async with session.post("/v1/leases", json={"ttl": LEASE_TTL}) as reply:
                lease = (await reply.json())["id"]
            made.append((lease, time.monotonic()))
            path = f"/v1/services/default/churn-{i}"
            body = {"clusterIP": vip(i), "ports": [{"name": "http", "port": 80}]}
            async with session.put(path, json=body) as reply:
                assert reply.status in (200, 201), await reply.text()
            endpoints = [{"id": f"e{j}", "ip": f"10.{100 + i // 250}.{i % 250}.{j + 1}",
                          "lease": lease} for j in range(per_lease)]
            async with session.put(f"{path}/endpoints", json={"endpoints": endpoints}) as reply:
                assert reply.status in (200, 201), await reply.text()
            return lease

        for start in range(0, leases, 50):
            await asyncio.gather(*(one(i) for i in range(start, min(leases, start + 50))))


class _Renewer(asyncio.Protocol):
    """One keep-alive connection that renews a lease at a time. It reads only the status and
    the length of each reply: aiohttp's client took 700 to 900 us of CPU per renewal on the
    core it shares with dnsperf, which then sent fewer queries (renewals from sidekicks on
    other machines cost this machine nothing). This takes 230 to 310 us, most of it the two
    wakeups (the send's timer, the reply) at about 140 us each on these VMs."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._status: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = _CONTENT_LENGTH.search(self._buffer, 0, end)
        after = end + 4 + (int(length.group(1)) if length else 0)
        if len(self._buffer) >= after and self._status is not None:
            self._status.set_result(int(self._buffer[9:12]))
            self._buffer, self._status = self._buffer[after:], None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._status is not None and not self._status.done():
            self._status.set_exception(ConnectionError("sdns closed the connection"))

    async def renew(self, lease: str) -> int:
        """The status of the renewal of ``lease``."""
        if self._transport.is_closing():
            raise ConnectionError("sdns closed the connection")
        self._status = asyncio.get_running_loop().create_future()
        self._transport.write(b"POST /v1/leases/%s/renew HTTP/1.1\r\nHost: sdns\r\n"
                              b"Content-Length: 0\r\n\r\n" % lease.encode())
        return await self._status

    def close(self) -> None:
        self._transport.close()


async def _renew(base: str, leases: list[tuple[str, float]], every: float,
                 stopping: threading.Event, renewing: threading.Event,
                 counts: list[float]) -> None:
    """Renew each lease once per ``every`` seconds of renewing, spread evenly, while
    ``renewing`` is set, over ``RENEWING_CONNECTIONS``. counts[0] renewals done, counts[1]
    failed and counts[2] the slowest in seconds, of those sent from monotonic time counts[4]
    on; counts[3] the longest a lease went between two renewals (or since it was made), which
    must stay below its ttl for a lost lease to be sdns's fault. ``leases`` may still be
    growing."""
    # ahead of dnsperf on the core they share, so that renewals go out on time, as a
    # sidekick's on another machine would (behind it, some leases lapsed)
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -5)
    last: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    host, port = base.removeprefix("http://").rsplit(":", 1)
    idle: asyncio.Queue[_Renewer] = asyncio.Queue()

    async def connect() -> _Renewer:
        return (await loop.create_connection(_Renewer, host, int(port)))[1]

    for _ in range(RENEWING_CONNECTIONS):
        idle.put_nowait(await connect())
    try:
        flying: set[asyncio.Task[None]] = set()

        async def renew(lease: str) -> None:
            sent = time.monotonic()
            connection = await idle.get()
            try:
                status = await connection.renew(lease)
            except ConnectionError:
                status, connection = 0, await connect()  # counted as failed
            finally:
                idle.put_nowait(connection)
            if sent >= counts[4]:
                counts[0 if status == 200 else 1] += 1
                counts[2] = max(counts[2], time.monotonic() - sent)
            counts[3] = max(counts[3], sent - last[lease])
            last[lease] = sent

        turn = 0
        while not stopping.is_set():
            if not renewing.is_set() or not leases:
                await asyncio.sleep(0.05)
                continue
            # on a schedule kept from the window's start, whatever each renewal takes (a
            # store's round trip under load can outlast the gap between two renewals) and
            # however late the loop wakes: a renewer that drifts renews fewer leases per
            # window, and with windows paused between, some leases would outlive their ttl
            due = time.monotonic()
            while renewing.is_set() and not stopping.is_set():
                lease, made = leases[turn % len(leases)]
                last.setdefault(lease, made)
                task = asyncio.create_task(renew(lease))
                flying.add(task)
                task.add_done_callback(flying.discard)
                turn += 1
                due += every / len(leases)
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        await asyncio.gather(*flying)
    finally:
        while not idle.empty():
            idle.get_nowait().close()
    now = time.monotonic()
    counts[3] = max([counts[3], *(now - at for at in last.values())])


async def _still_held(base: str, leases: list[str]) -> int:
    async with aiohttp.ClientSession(base) as session:
        async def held(lease: str) -> int:
            async with session.get(f"/v1/leases/{lease}") as reply:
                return (await reply.json())["endpoints"] if reply.status == 200 else 0

        total = 0
        for start in range(0, len(leases), 100):
            total += sum(await asyncio.gather(*(held(i) for i in leases[start:start + 100])))
        return total


def run(backend: str, args: argparse.Namespace, workdir: Path) -> tuple[object, ...] | None:
    with ExitStack() as stack:
        flags = _backend_flags(backend, stack)
        if flags is None:
            return None
        process = SdnsProcess(*flags, "--service-cidr", "10.96.0.0/12",
                              "--log-level", "warning").start()
        stack.callback(process.stop)
        per_lease = args.endpoints // args.leases
        leases: list[tuple[str, float]] = []
        renewing, stopping = threading.Event(), threading.Event()
        counts = [0, 0, 0.0, 0.0, 0.0]
        renewing.set()  # from the first lease on: loading a slow store outlasts a ttl
        renewer = threading.Thread(target=asyncio.run, args=(_renew(
            process.api.base, leases, args.renew_every, stopping, renewing, counts),))
        renewer.start()
        stack.callback(renewer.join)  # whatever fails, the renewer stops before sdns does
        stack.callback(stopping.set)
        started = time.monotonic()
        asyncio.run(_register(process.api.base, args.leases, per_lease, leases))
        loaded = time.monotonic() - started
        pin_to_server_core(process.process.pid)
        queries = workdir / f"churn-{backend}.txt"
        queries.write_text("".join(f"churn-{i}.default.{ZONE} A\n" for i in range(args.leases)))
        server = Server(process.dns_port, process.process.pid)
        dnsperf(server, queries, 60, passes=1)  # answers are built on a miss
        # renewals sent during the timed windows only: one sent while the store was still
        # loading can come back during them, and its wait is the loading's, not the windows'
        counts[:3], counts[4] = [0, 0, 0.0], time.monotonic()
        quiet, busy = [], []
        for window in range(max(2, args.hold // args.window)):
            if window % 2:
                renewing.set()
            else:
                renewing.clear()
            # a window with lost queries would wait dnsperf's default 5 s for them,
            # stretching the pause between two renewals of a lease towards its ttl
            measured = dnsperf(server, queries, args.window, timeout=1)[0]
            (busy if window % 2 else quiet).append(measured)
        renewing.set()  # while the leases are counted
        held = asyncio.run(_still_held(process.api.base, [i for i, _ in leases]))
        stopping.set()
        renewer.join()
        qps = [median([r.qps for r in runs]) for runs in (quiet, busy)]
        per_cpu = [median([r.qps / r.cpu for r in runs]) for runs in (quiet, busy)]
        return (backend, f"{per_lease * args.leases:,}", args.leases, f"{loaded:.0f} s",
                f"{counts[0]:,} ({counts[1]} failed)", f"{counts[2] * 1000:,.0f}",
                f"{counts[3]:.1f}",
                f"{qps[0]:,.0f}", f"{qps[1]:,.0f}",
                f"{qps[1] / qps[0]:.2f}x", f"{per_cpu[1] / per_cpu[0]:.2f}x",
                f"{per_lease * args.leases - held:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoints", type=int, default=150_000)
    parser.add_argument("--leases", type=int, default=1_500)
    parser.add_argument("--renew-every", type=float, default=10.0)
    parser.add_argument("--hold", type=int, default=60)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--backends", default="memory,etcd,zookeeper")
    args = parser.parse_args()
    # The renewing client and the store are load, like dnsperf: core 1, inherited by every
    # thread and process started from here (sdns is moved to core 0 once loaded). Unpinned,
    # they took turns on sdns's core, and the renewals' cost read as DNS's.
    os.sched_setaffinity(0, {1})
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdns-churn-") as tmp:
        for backend in args.backends.split(","):
            row = run(backend, args, Path(tmp))
            if row is not None:
                rows.append(row)
    command = (f"python -m bench churn --endpoints {args.endpoints} --leases {args.leases} "
               f"--renew-every {args.renew_every:g} --hold {args.hold} --window {args.window}")
    write_section("churn", "\n\n".join([
        "## Churn: leases renewed under DNS load",
        f"`{command}` on {platform.node()}, {time.strftime('%Y-%m-%d')}: each lease holds the "
        "endpoints of one ClusterIP service; dnsperf asks the services' names (sdns on core 0; "
        "dnsperf, the renewing client and the store on core 1) in windows that alternate "
        "renewing every lease once per period with not renewing, so a lease waits about two "
        f"periods between renewals (its ttl is {LEASE_TTL} s); medians of the windows.",
        table(["backend", "endpoints", "leases", "registered in", "renewals",
               "slowest renewal, ms", f"longest unrenewed, s (ttl {LEASE_TTL})",
               "DNS QPS without renewals", "with renewals", "ratio",
               "ratio per sdns CPU second", "endpoints lost"], rows),
    ]))


if __name__ == "__main__":
    main()
