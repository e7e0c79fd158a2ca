"""How soon a change is in DNS, and how many registrations per second, per backend.

Freshness: from the HTTP response of a registration (and of a deregistration) to the first DNS
answer that reflects it, asked of the same replica and of a second replica on the same store.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import dns.rcode

from bench.report import median, percentile, table, write_section
from tests.helpers.servers import Etcd, ZooKeeper, missing_etcd, missing_zookeeper
from tests.helpers.support import SdnsProcess, query

BACKENDS = ["memory", "etcd", "zookeeper"]
POLL_TIMEOUT = 5.0


def _wait_for(process: SdnsProcess, name: str, present: str | None) -> float:
    """Seconds until ``name`` answers ``present`` (NXDOMAIN when None); bounded."""
    start = time.perf_counter()
    while time.perf_counter() - start < POLL_TIMEOUT:
        reply = query(process.dns_port, name)
        got = [rd.to_text() for rrset in reply.answer for rd in rrset]
        if (present is None and reply.rcode() == dns.rcode.NXDOMAIN) or got == [present]:
            return time.perf_counter() - start
    raise TimeoutError(f"{name} did not become {present or 'NXDOMAIN'}")


def freshness(writer: SdnsProcess, reader: SdnsProcess, changes: int) -> dict[str, list[float]]:
    """Registration and deregistration lags, ``changes`` of each."""
    ns = "fresh-" + uuid.uuid4().hex[:6]
    writer.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None"})
    put_lags, delete_lags = [], []
    for i in range(changes):
        ip = f"10.{100 + i // 65025}.{i // 255 % 255}.{i % 255 + 1}"
        path = f"/v1/services/{ns}/db/endpoints/e"
        assert writer.api.put(path, {"ip": ip}).status in (200, 201)
        put_lags.append(_wait_for(reader, f"db.{ns}.svc.cluster.local", ip))
        assert writer.api.delete(path).status == 204
        delete_lags.append(_wait_for(reader, f"db.{ns}.svc.cluster.local", None))
    return {"register": put_lags, "deregister": delete_lags}


def ttl_expiry(process: SdnsProcess, samples: int, ttl: int = 1) -> list[float]:
    """Seconds from registration to NXDOMAIN for endpoints with ``ttl``, minus the ttl."""
    ns = "ttl-" + uuid.uuid4().hex[:6]
    lags = []
    for i in range(samples):
        process.api.put(f"/v1/services/{ns}/t{i}", {"clusterIP": "None"})
        registered = time.perf_counter()
        process.api.put(f"/v1/services/{ns}/t{i}/endpoints/e", {"ip": "10.9.9.9", "ttl": ttl})
        name = f"t{i}.{ns}.svc.cluster.local"
        while query(process.dns_port, name).rcode() != dns.rcode.NXDOMAIN:
            if time.perf_counter() - registered > ttl + POLL_TIMEOUT:
                raise TimeoutError(f"{name} outlived its ttl")
            time.sleep(0.01)
        lags.append(time.perf_counter() - registered - ttl)
    return lags


def registration_rate(process: SdnsProcess, seconds: int) -> float:
    """Registrations per second that wrk (32 connections, one thread) gets for ``seconds``:
    each request registers a new endpoint of one of 100 services."""
    script = Path(__file__).with_name("register.lua")
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script), process.api.base],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
        env={"SDNS_BENCH_NS": "rate-" + uuid.uuid4().hex[:6]}).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"registrations failed:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def heartbeat_rate(process: SdnsProcess, seconds: int) -> float:
    """Heartbeats per second that wrk (32 connections, one thread) gets for ``seconds``, over
    1,000 endpoints with a ttl of their own (so each heartbeat renews a lease)."""
    ns = "beat-" + uuid.uuid4().hex[:6]
    for s in range(10):
        reply = process.api.put(f"/v1/services/{ns}/s{s}/endpoints", {"endpoints": [
            {"id": f"e{i}", "ip": "10.9.8.7", "ttl": 300} for i in range(s, 1000, 10)]})
        if reply.status not in (200, 201):
            raise RuntimeError(f"could not register the endpoints: {reply.body}")
    script = Path(__file__).with_name("heartbeat.lua")
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script), process.api.base],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
        env={"SDNS_BENCH_NS": ns}).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"heartbeats failed:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def _backend_flags(backend: str, stack: ExitStack) -> list[str] | None:
    prefix = ["--prefix", f"/sdns-bench-{uuid.uuid4().hex[:6]}"]
    if backend == "memory":
        return ["--backend", "memory"]
    missing = missing_etcd() if backend == "etcd" else missing_zookeeper()
    if missing:
        print(f"skipping {backend}: {missing}")
        return None
    server = (Etcd() if backend == "etcd" else ZooKeeper()).start()
    stack.callback(server.remove)
    flag = "--etcd-endpoints" if backend == "etcd" else "--zk-hosts"
    return ["--backend", backend, flag, server.endpoint, *prefix]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=5, help="of registration load")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    rows, rates = [], []
    for backend in args.backends.split(","):
        with ExitStack() as stack:
            flags = _backend_flags(backend, stack)
            if flags is None:
                continue
            a = SdnsProcess(*flags).start()
            stack.callback(a.stop)
            pairs = [("same replica", a)]
            if backend != "memory":
                b = SdnsProcess(*flags).start()
                stack.callback(b.stop)
                pairs.append(("replica to replica", b))
            for where, reader in pairs:
                for kind, lags in freshness(a, reader, args.changes).items():
                    ms = [lag * 1000 for lag in lags]
                    rows.append((backend, where, kind, len(ms), f"{median(ms):.2f}",
                                 f"{percentile(ms, 99):.2f}", f"{max(ms):.2f}"))
            expiry = ttl_expiry(a, 5)
            rate = registration_rate(a, args.seconds)
            beats = heartbeat_rate(a, args.seconds)
            rates.append((backend, f"{rate:.0f}", f"{beats:.0f}", f"{max(expiry) * 1000:.0f}"))
    command = f"python -m bench freshness --changes {args.changes} --seconds {args.seconds}"
    write_section("freshness", "\n\n".join([
        "## Freshness and registration rate",
        f"`{command}` on {platform.node()}, {time.strftime('%Y-%m-%d')}; each backend on "
        "loopback, one sdns writing and, for etcd and ZooKeeper, a second replica reading.",
        "Lag from the HTTP response to the first DNS answer that reflects the change, ms:",
        table(["backend", "read from", "change", "n", "p50", "p99", "max"], rows),
        "Registrations per second (wrk: 32 connections, each request a new endpoint through "
        "the one-call path), heartbeats per second (wrk: 32 connections, each renewing one "
        "of 1,000 endpoints with a ttl, so a lease) "
        "and how late a ttl=1 endpoint left DNS after its TTL (worst of 5):",
        table(["backend", "registrations/s", "heartbeats/s", "TTL expiry lag, ms"], rates),
    ]))


if __name__ == "__main__":
    main()
