"""Start to ready: how long a new sdns takes to serve 100,000 services it finds in etcd.

The services (3 endpoints each) are written straight into etcd with the documented key layout,
in transactions of 64 keys, then `sdns serve --backend etcd` is started and timed until /readyz
answers and DNS answers the last service.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time

import aetcd

from backends import stored
from bench.qps import vip
from bench.report import median, rss_mb, table, write_section
from sdns.model import Endpoint, Service, ServicePort
from tests.helpers.servers import Etcd
from tests.helpers.support import SdnsProcess, query

BATCH = 64


def _keys(services: int, prefix: str) -> list[tuple[bytes, bytes]]:
    keys = []
    for i in range(services):
        service = Service("default", f"web-{i}", ports=(ServicePort("http", 80),),
                          cluster_ips=(vip(i),))
        keys.append((f"{prefix}/services/default/web-{i}".encode(),
                     stored.dump(service)))
        keys.append((f"{prefix}/clusterips/{service.cluster_ip}".encode(),
                     f"default/web-{i}".encode()))
        for e in range(3):
            endpoint = Endpoint(f"e{e}", f"10.244.{i % 250}.{e + 1}", f"e{e}", (("http", 80),))
            keys.append((f"{prefix}/endpoints/default/web-{i}/e{e}".encode(),
                         stored.dump(endpoint)))
    return keys


async def _fill(endpoint: str, keys: list[tuple[bytes, bytes]]) -> None:
    host, _, port = endpoint.rpartition(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        tx = client.transactions
        batches = iter(range(0, len(keys), BATCH))

        async def worker() -> None:
            for start in batches:
                ops = [tx.put(k, v) for k, v in keys[start:start + BATCH]]
                await client.transaction(compare=[], success=ops, failure=[])

        await asyncio.gather(*(worker() for _ in range(8)))


def _start(endpoint: str, last: str) -> tuple[float, float, float]:
    """Start sdns against the filled etcd: (seconds to /healthz, to ready, RSS in MB)."""
    started = time.monotonic()
    process = SdnsProcess("--backend", "etcd", "--etcd-endpoints", endpoint,
                          "--service-cidr", "10.96.0.0/12").start(timeout=120)
    try:
        healthy = time.monotonic() - started
        while process.api.get("/readyz").status != 200 or not query(
                process.dns_port, last).answer:
            time.sleep(0.05)
        return healthy, time.monotonic() - started, rss_mb(process.process.pid)
    finally:
        process.stop()


def _seconds(values: list[float]) -> str:
    return f"{median(values):.1f} s ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    etcd = Etcd().start()
    try:
        keys = _keys(args.services, "/sdns")
        started = time.monotonic()
        asyncio.run(_fill(etcd.endpoint, keys))
        fill_seconds = time.monotonic() - started
        last = f"web-{args.services - 1}.default.svc.cluster.local"

        starts = [_start(etcd.endpoint, last) for _ in range(args.rounds)]
    finally:
        etcd.remove()
    write_section("startup", "\n\n".join([
        "## Start to ready from etcd",
        f"`python -m bench startup --services {args.services} --rounds {args.rounds}` on "
        f"{platform.node()}, {time.strftime('%Y-%m-%d')}: {args.services:,} services with 3 "
        f"endpoints each ({len(keys):,} keys, written in {fill_seconds:.0f} s), then a new "
        f"sdns started against that etcd {args.rounds} times: medians (range).",
        table(["figure", "measured", "target"], [
            ("start to /healthz (snapshot loaded, DNS listening)",
             _seconds([s[0] for s in starts]), ""),
            ("start to ready (/readyz and DNS answering the last service)",
             _seconds([s[1] for s in starts]), "<= 10 s"),
            ("RSS once ready", f"{median([s[2] for s in starts]):.0f} MB", ""),
        ]),
    ]))


if __name__ == "__main__":
    main()
