"""What active health checks cost DNS: the hot mix against sdns without checks and against
sdns probing 10,000 checked endpoints (tcp, every 10 s: 1,000 probes a second), alternating.

Both servers are pinned to core 0, dnsperf and the probed workload (one TCP listener that
accepts and closes) to core 1. The server not measured is stopped (SIGSTOP) so it takes nothing
from core 0; the checked one is given 2 s after it resumes to catch up on the probes it owed
before it is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp

from bench.qps import HOT, Server, dnsperf, query_files, start_sdns
from bench.report import cpu_seconds, median, table, write_section
from tests.helpers.support import free_port

CHECKED = 10_000
PER_SERVICE = 100
INTERVAL = 10
WORKLOAD = """
import asyncio, sys
async def main():
    async def close(reader, writer):
        writer.close()
    server = await asyncio.start_server(close, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()
asyncio.run(main())
"""


async def _checked(base: str, port: int) -> None:
    """CHECKED endpoints with a tcp check each, PER_SERVICE to a service, in endpoint sets."""
    check = {"type": "tcp", "port": "app", "interval": INTERVAL, "timeout": 2}
    async with aiohttp.ClientSession(base) as session:
        for s in range(CHECKED // PER_SERVICE):
            endpoints = [{"id": f"e{i}", "ip": "127.0.0.1", "ports": {"app": port},
                          "check": check} for i in range(PER_SERVICE)]
            async with session.put(f"/v1/services/checked/c{s}/endpoints",
                                   json={"endpoints": endpoints}) as reply:
                assert reply.status in (200, 201), await reply.text()


async def _passing(base: str) -> int:
    async with aiohttp.ClientSession(base) as session, \
            session.get("/v1/endpoints?namespace=checked") as reply:
        found = (await reply.json())["endpoints"]
    return sum(e.get("health") == "passing" for e in found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="sdns-bench-") as tmp:
        port = free_port()
        workload = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", WORKLOAD,
                                     str(port)])
        stack.callback(workload.kill)
        files = query_files(Path(tmp), HOT)
        plain, checked = start_sdns(HOT, stack), start_sdns(HOT, stack)
        asyncio.run(_checked(checked.api.base, port))
        deadline = time.monotonic() + 60
        while asyncio.run(_passing(checked.api.base)) < CHECKED:
            if time.monotonic() > deadline:
                raise SystemExit("the checked endpoints did not all pass within 60 s")
            time.sleep(1)
        before = cpu_seconds(checked.process.pid)
        time.sleep(10)
        idle = (cpu_seconds(checked.process.pid) - before) / 10  # probing, no DNS load
        servers = {"no checks": plain, f"{CHECKED:,} checks": checked}
        runs: dict[str, list] = {name: [] for name in servers}
        for process in servers.values():  # one warm pass each
            dnsperf(Server(process.dns_port, process.process.pid), files["hot"], 120, passes=1)
        for _ in range(args.rounds):
            for name, process in servers.items():
                others = [p for p in servers.values() if p is not process]
                for other in others:
                    os.kill(other.process.pid, signal.SIGSTOP)
                time.sleep(2)
                try:
                    runs[name].append(dnsperf(Server(process.dns_port, process.process.pid),
                                              files["hot"], args.seconds)[0])
                finally:
                    for other in others:
                        os.kill(other.process.pid, signal.SIGCONT)
        probes = asyncio.run(_passing(checked.api.base))
    qps = {name: median([r.qps for r in rs]) for name, rs in runs.items()}
    cpu = {name: median([r.cpu for r in rs]) for name, rs in runs.items()}
    names = list(servers)
    ratio = qps[names[1]] / qps[names[0]]
    rows = [[name, f"{qps[name]:,.0f}", f"{cpu[name]:.2f}",
             ", ".join(f"{r.qps:,.0f}" for r in runs[name])] for name in names]
    write_section("checks", f"""
## What active health checks cost DNS (warm)

`python -m bench checks` (hot mix, A and SRV of {HOT} services; {CHECKED:,} endpoints with a
tcp check every {INTERVAL} s against one listener on loopback, {probes:,} passing at the end;
{args.rounds} alternations of {args.seconds} s, the other server stopped meanwhile).

{table(["sdns", "QPS (median)", "server CPU (cores)", "rounds"], rows)}

| figure | measured | target |
| --- | --- | --- |
| hot mix QPS with {CHECKED:,} checked endpoints / without | {ratio:.2f}x | >= 0.9x |
| CPU of the probing alone, no DNS load ({CHECKED // INTERVAL:,} probes/s) | {idle:.2f} cores | |

The probes run on the event loop and the cached answers on the UDP thread, so on a saturated
core the answers keep their rate; the probing's own cost shows in the idle figure.
""")


if __name__ == "__main__":
    main()
