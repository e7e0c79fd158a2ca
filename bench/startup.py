"""Start to ready: how long a new sdns takes to serve 100,000 services it finds in its store.

The services (3 endpoints each) are written straight into etcd, and into ZooKeeper, with the
documented layout, in transactions of about 64 keys or znodes; then `sdns serve` is started on
that store and timed until /readyz answers and DNS answers the last service.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time

import aetcd
from kazoo.client import KazooClient

from backends import stored
from bench.qps import vip
from bench.report import median, rss_mb, table, write_section
from sdns.model import Endpoint, Service, ServicePort
from tests.helpers.servers import Etcd, ZooKeeper, running
from tests.helpers.support import SdnsProcess, query

BATCH = 64
PREFIX = "/sdns"  # the default, which the started sdns uses


def _records(services: int) -> list[tuple[str, bytes]]:
    """(path under the prefix, data) of each object, every service before its endpoints."""
    records = []
    for i in range(services):
        service = Service("default", f"web-{i}", ports=(ServicePort("http", 80),),
                          cluster_ips=(vip(i),))
        records.append((f"services/default/web-{i}", stored.dump(service)))
        records.append((f"clusterips/{service.cluster_ip}", f"default/web-{i}".encode()))
        for e in range(3):
            endpoint = Endpoint(f"e{e}", f"10.244.{i % 250}.{e + 1}", f"e{e}", (("http", 80),))
            records.append((f"endpoints/default/web-{i}/e{e}", stored.dump(endpoint)))
    return records


async def _fill_etcd(endpoint: str, records: list[tuple[str, bytes]]) -> None:
    host, _, port = endpoint.rpartition(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        tx = client.transactions
        batches = iter(range(0, len(records), BATCH))

        async def worker() -> None:
            for start in batches:
                ops = [tx.put(f"{PREFIX}/{path}".encode(), data)
                       for path, data in records[start:start + BATCH]]
                await client.transaction(compare=[], success=ops, failure=[])

        await asyncio.gather(*(worker() for _ in range(8)))


def _fill_zookeeper(endpoint: str, records: list[tuple[str, bytes]]) -> None:
    """The znodes, as sdns writes them: a service's endpoints in a folder made with it."""
    client = KazooClient(hosts=endpoint)
    client.start()
    try:
        for folder in ("services/default", "endpoints/default", "clusterips", "log"):
            client.ensure_path(f"{PREFIX}/{folder}")
        client.create(f"{PREFIX}/revision", b"")
        pending = []
        for start in range(0, len(records), BATCH):
            transaction = client.transaction()
            for path, data in records[start:start + BATCH]:
                if path.startswith("services/"):
                    transaction.create(f"{PREFIX}/endpoints/{path.partition('/')[2]}", b"")
                transaction.create(f"{PREFIX}/{path}", data)
            pending.append(transaction.commit_async())
            if len(pending) == 16:  # in flight at once
                pending.pop(0).get()
        for result in pending:
            result.get()
    finally:
        client.stop()
        client.close()


def _start(flags: list[str], last: str) -> tuple[float, float, float]:
    """Start sdns against the filled store: (seconds to /healthz, to ready, RSS in MB)."""
    started = time.monotonic()
    process = SdnsProcess(*flags, "--service-cidr", "10.96.0.0/12").start(timeout=120)
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
    parser.add_argument("--backends", default="etcd,zookeeper")
    args = parser.parse_args()
    records = _records(args.services)
    last = f"web-{args.services - 1}.default.svc.cluster.local"
    rows = []
    for backend in args.backends.split(","):
        with running(Etcd if backend == "etcd" else ZooKeeper) as server:
            started = time.monotonic()
            if backend == "etcd":
                asyncio.run(_fill_etcd(server.endpoint, records))
            else:
                _fill_zookeeper(server.endpoint, records)
            filled = time.monotonic() - started
            flag = "--etcd-endpoints" if backend == "etcd" else "--zk-hosts"
            starts = [_start(["--backend", backend, flag, server.endpoint], last)
                      for _ in range(args.rounds)]
        rows.append((backend, f"{filled:.0f} s", _seconds([s[0] for s in starts]),
                     _seconds([s[1] for s in starts]), "<= 10 s" if backend == "etcd" else "",
                     f"{median([s[2] for s in starts]):.0f} MB"))
    write_section("startup", "\n\n".join([
        "## Start to ready from etcd and ZooKeeper",
        f"`python -m bench startup --services {args.services} --rounds {args.rounds}` on "
        f"{platform.node()}, {time.strftime('%Y-%m-%d')}: {args.services:,} services with 3 "
        f"endpoints each ({len(records):,} keys or znodes, written first), then a new sdns "
        f"started against that store {args.rounds} times: medians (range). Start to /healthz "
        "is the snapshot loaded and DNS listening; ready is /readyz and DNS answering the last "
        "service.",
        table(["store", "written in", "start to /healthz", "start to ready", "target",
               "RSS once ready"], rows),
    ]))


if __name__ == "__main__":
    main()
