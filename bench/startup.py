"""Start to ready: how long a new sdns takes to serve 100,000 services it finds in etcd.

The services (3 endpoints each) are written straight into etcd with the documented key layout,
in transactions of 64 keys, then `sdns serve --backend etcd` is started and timed until /readyz
answers and DNS answers the last service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time

import aetcd
from qps import vip
from report import rss_mb, table, write_section
from servers import Etcd
from support import SdnsProcess, query

from sdns.model import Endpoint, Service, ServicePort

BATCH = 64


def _keys(services: int, prefix: str) -> list[tuple[bytes, bytes]]:
    keys = []
    for i in range(services):
        service = Service("default", f"web-{i}", ports=(ServicePort("http", 80),),
                          cluster_ip=vip(i))
        keys.append((f"{prefix}/services/default/web-{i}".encode(),
                     json.dumps(service.to_json()).encode()))
        keys.append((f"{prefix}/clusterips/{service.cluster_ip}".encode(),
                     f"default/web-{i}".encode()))
        for e in range(3):
            endpoint = Endpoint(f"e{e}", f"10.244.{i % 250}.{e + 1}", f"e{e}", (("http", 80),))
            keys.append((f"{prefix}/endpoints/default/web-{i}/e{e}".encode(),
                         json.dumps(endpoint.to_json()).encode()))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=100_000)
    args = parser.parse_args()
    etcd = Etcd().start()
    try:
        keys = _keys(args.services, "/sdns")
        started = time.monotonic()
        asyncio.run(_fill(etcd.endpoint, keys))
        fill_seconds = time.monotonic() - started
        last = f"web-{args.services - 1}.default.svc.cluster.local"

        started = time.monotonic()
        process = SdnsProcess("--backend", "etcd", "--etcd-endpoints", etcd.endpoint,
                              "--service-cidr", "10.96.0.0/12").start(timeout=120)
        healthy = time.monotonic() - started
        while process.api.get("/readyz").status != 200 or not query(
                process.dns_port, last).answer:
            time.sleep(0.05)
        ready = time.monotonic() - started
        rss = rss_mb(process.process.pid)
        process.stop()
    finally:
        etcd.remove()
    write_section("startup", "\n\n".join([
        "## Start to ready from etcd",
        f"`python -m bench startup --services {args.services}` on {platform.node()}, "
        f"{time.strftime('%Y-%m-%d')}: {args.services:,} services with 3 endpoints each "
        f"({len(keys):,} keys, written in {fill_seconds:.0f} s), then a new sdns started "
        "against that etcd.",
        table(["figure", "measured", "target"], [
            ("start to /healthz (snapshot loaded, DNS listening)", f"{healthy:.1f} s", ""),
            ("start to ready (/readyz and DNS answering the last service)", f"{ready:.1f} s",
             "<= 10 s"),
            ("RSS once ready", f"{rss:.0f} MB", ""),
        ]),
    ]))


if __name__ == "__main__":
    main()
