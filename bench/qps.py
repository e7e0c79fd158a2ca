"""sdns against dnsmasq and Knot DNS under dnsperf, same machine, same run, same query files.

The server runs pinned to core 0 and dnsperf to core 1; each mix alternates dnsmasq and sdns
several times and quotes medians, because a run of dnsmasq against itself varies by 20% here.

Mixes: hot (A and SRV of 100 services), wide (A of 100,000 services with 3 endpoints each, in
random order), negative (random names under the zone, and search-path names as a pod with
ndots:5 sends), and scale (the hot mix with 100 services registered against 100,000). The
first pass through the wide and negative files is the cold figure: names never asked before.
It is a median of alternations too, each with names new to every server: the wide names on
an sdns loaded for that round alone, the random names from a file of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import platform
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import aiohttp

from bench.report import (
    ROOT,
    cpu_seconds,
    median,
    peak_rss_mb,
    percentile,
    pin_to_server_core,
    rss_mb,
    table,
    write_section,
)
from sdns.config import Config
from tests.helpers.support import SdnsProcess, free_port, query

ZONE = "svc.cluster.local"
HOT = 100
RANDOM_NAMES = 500_000  # in the negative mix, each asked once in its first pass
CACHE_MB = Config().cache_mb  # sdns runs with the default
CLIENTS = 4
OUTSTANDING = 200


def vip(i: int) -> str:
    """The clusterIP the bench gives service i (from 10.96.0.1 on), for sdns and dnsmasq."""
    return str(ipaddress.IPv4Address(0x0A600001 + i))


@dataclass
class Run:
    qps: float
    lost: int
    avg_ms: float
    cpu: float  # the server's CPU time over the run's, in cores


class Server(NamedTuple):
    port: int
    pid: int


class Reference:
    """A reference DNS server the bench started: its process, pinned to core 0."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Dnsmasq(Reference):
    def __init__(self, services: int, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / f"dnsmasq-{services}.conf"
        with config.open("w") as out:
            for i in range(services):
                out.write(f"host-record=web-{i}.default.{ZONE},{vip(i)}\n")
            for i in range(min(services, HOT)):
                out.write(f"srv-host=_http._tcp.web-{i}.default.{ZONE},web-{i}.default.{ZONE},80\n")
        self.process = subprocess.Popen(
            ["taskset", "-c", "0", "dnsmasq", "--no-daemon", "--port", str(self.port),
             "--listen-address", "127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
             "--local=/cluster.local/", f"--conf-file={config}", "--log-facility=/dev/null",
             # its hash table is sized from the cache: too small a cache makes lookups of
             # 100,000 records crawl (2,100 QPS here instead of 55,000)
             f"--cache-size={max(10_000, services * 3 // 2)}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_answering(self.port, f"web-0.default.{ZONE}")


class Knot(Reference):
    """Knot DNS (Debian's knot), the reference authoritative server: the same records as a
    zone file, one UDP worker, pinned to core 0 like the others."""

    def __init__(self, services: int, workdir: Path) -> None:
        self.port = free_port()
        home = workdir / f"knot-{services}"
        home.mkdir()
        lines = ["$ORIGIN cluster.local.", "$TTL 5",
                 "@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5",
                 "@ NS ns.dns", "ns.dns A 127.0.0.1"]
        lines += [f"web-{i}.default.svc A {vip(i)}" for i in range(services)]
        lines += [f"_http._tcp.web-{i}.default.svc SRV 0 100 80 web-{i}.default.svc"
                  for i in range(min(services, HOT))]
        (home / "cluster.local.zone").write_text("\n".join(lines) + "\n")
        (home / "knot.conf").write_text(
            f"server:\n    listen: 127.0.0.1@{self.port}\n    udp-workers: 1\n"
            f"    tcp-workers: 1\n    background-workers: 1\n    rundir: {home}\n"
            f"database:\n    storage: {home}/db\n"
            f"template:\n  - id: default\n    storage: {home}\n    semantic-checks: off\n"
            "zone:\n  - domain: cluster.local\n    file: cluster.local.zone\n"
            "log:\n  - target: stderr\n    any: error\n")
        self.process = subprocess.Popen(
            ["taskset", "-c", "0", "knotd", "-c", str(home / "knot.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_answering(self.port, f"web-0.default.{ZONE}")


def _wait_answering(port: int, name: str) -> None:

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if query(port, name).answer:
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no answer for {name} on port {port}")


async def _load(base: str, services: int) -> None:
    """Register services 0..services-1 with clusterIP vip(i), and 3 endpoints each."""
    queue = iter(range(services))
    async with aiohttp.ClientSession(base) as session:
        async def worker() -> None:
            for i in queue:
                path = f"/v1/services/default/web-{i}"
                body = {"clusterIP": vip(i), "ports": [{"name": "http", "port": 80}]}
                async with session.put(path, json=body) as response:
                    assert response.status in (200, 201), await response.text()
                for e in range(3):
                    endpoint = {"ip": f"10.244.{i % 250}.{e + 1}"}
                    async with session.put(f"{path}/endpoints/e{e}", json=endpoint) as response:
                        assert response.status in (200, 201), await response.text()

        await asyncio.gather(*(worker() for _ in range(32)))


def start_sdns(services: int, stack: ExitStack) -> SdnsProcess:
    process = SdnsProcess("--service-cidr", "10.96.0.0/12", "--log-level", "warning").start()
    stack.callback(process.stop)
    asyncio.run(_load(process.api.base, services))
    pin_to_server_core(process.process.pid)
    return process


def query_files(workdir: Path, services: int, negatives: int = 1) -> dict[str, Path]:
    """The query file of each mix; ``negatives`` files of the negative mix, each with random
    names of its own ("negative", then "negative-1" and on)."""
    rng = random.Random(1053)
    order = rng.sample(range(services), services)
    files = {
        "hot": [f"web-{i}.default.{ZONE} A\n_http._tcp.web-{i}.default.{ZONE} SRV"
                for i in range(HOT)],
        "wide": [f"web-{i}.default.{ZONE} A" for i in order],
        # as glibc asks: A, then AAAA, of each name
        "glibc": [f"web-{i}.default.{ZONE} A\nweb-{i}.default.{ZONE} AAAA" for i in order],
    }
    for n in range(negatives):
        files[f"negative-{n}" if n else "negative"] = [
            f"nx-{rng.getrandbits(48):x}.default.{ZONE} A" if i % 2 else
            f"web-{rng.randrange(HOT)}.default.{ZONE}.default.{ZONE} A"
            for i in range(2 * RANDOM_NAMES)]
    paths = {}
    for name, lines in files.items():
        paths[name] = workdir / f"{name}.txt"
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


def dnsperf(server: Server, queries: Path, seconds: int, rate: int | None = None,
            verbose: bool = False, passes: int | None = None,
            timeout: int | None = None, edns: bool = False) -> tuple[Run, list[float]]:
    command = ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(server.port),
               "-d", str(queries), "-c", str(CLIENTS), "-q", str(OUTSTANDING), "-l",
               str(seconds)]
    if passes:
        command += ["-n", str(passes)]
    if rate:
        command += ["-Q", str(rate)]
    if timeout:
        command += ["-t", str(timeout)]
    if edns:  # an OPT record with no options, as Go's resolver sends
        command.append("-e")
    if verbose:
        command.append("-v")
    cpu_before = cpu_seconds(server.pid)
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                         check=True).stdout
    cpu = cpu_seconds(server.pid) - cpu_before
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    avg = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1)) * 1000
    elapsed = float(re.search(r"Run time \(s\):\s+([\d.]+)", out).group(1))
    # "> NOERROR name type 0.000172" per answered query; lost ones carry no latency
    latencies = [float(m.group(1)) * 1000 for m in re.finditer(r"^> \S+ .* ([\d.]+)$", out, re.M)]
    return Run(qps, lost, avg, cpu / elapsed), latencies


def compare(servers: dict[str, Server], queries: Path, rounds: int, seconds: int
            ) -> dict[str, list[Run]]:
    """Alternate the servers ``rounds`` times on one query file, after one pass through it
    (answers are built on a miss): the warm figure."""
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    for server in servers.values():
        dnsperf(server, queries, 120, passes=1)
    for _ in range(rounds):
        for name, server in servers.items():
            runs[name].append(dnsperf(server, queries, seconds)[0])
    return runs


def first_passes(rounds: list[tuple[dict[str, Server], Path]], edns: bool = False
                 ) -> dict[str, list[Run]]:
    """One pass through a query file per round, alternating the servers of the round: the
    cold figure, so each round's servers have never been asked its names."""
    runs: dict[str, list[Run]] = {}
    for servers, queries in rounds:
        for name, server in servers.items():
            runs.setdefault(name, []).append(
                dnsperf(server, queries, 120, passes=1, edns=edns)[0])
    return runs


def per_cpu_second(runs: list[Run]) -> float:
    """The median of the runs' queries per second of server CPU: what the server could answer
    were the client not the limit (dnsperf's core is saturated before sdns's is)."""
    return median([r.qps / r.cpu for r in runs])


def _each(values: Iterable[float], spec: str = ".2f") -> str:
    return ", ".join(format(v, spec) for v in values)


def _cold(runs: dict[str, list[Run]]) -> str:
    """Medians of first passes per server CPU second, then every pass: sdns / Knot / dnsmasq."""
    order = ("sdns", "knot", "dnsmasq")
    medians = " / ".join(f"{per_cpu_second(runs[n]):,.0f}" for n in order)
    passes = "; ".join(_each((r.qps / r.cpu for r in runs[n]), ",.0f") for n in order)
    return f"{medians} = {per_cpu_second(runs['sdns']) / per_cpu_second(runs['knot']):.2f}x " \
           f"Knot (passes: {passes})"


def chart(rows: list[tuple[str, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = [r[0] for r in rows]
    x = range(len(mixes))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([i - 0.2 for i in x], [r[1] / 1000 for r in rows], 0.4, label="dnsmasq")
    ax.bar([i + 0.2 for i in x], [r[2] / 1000 for r in rows], 0.4, label="sdns")
    for i, r in enumerate(rows):
        ax.text(i + 0.2, r[2] / 1000, f"{r[2] / r[1]:.2f}x", ha="center", va="bottom")
    ax.set_xticks(list(x), mixes)
    ax.set_ylabel("thousand queries per second (median)")
    ax.set_title("sdns vs dnsmasq, dnsperf, server pinned to one core")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    for tool in ("dnsperf", "dnsmasq", "knotd", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: make bench installs dnsperf, dnsmasq-base "
                             "and knot")
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="sdns-bench-") as tmp:
        workdir = Path(tmp)
        files = query_files(workdir, args.services, args.rounds)
        small_sdns = start_sdns(HOT, stack)
        small_dnsmasq = Dnsmasq(HOT, workdir)
        stack.callback(small_dnsmasq.stop)
        small_knot = Knot(HOT, workdir)
        stack.callback(small_knot.stop)
        baseline_rss = rss_mb(small_sdns.process.pid)

        started = time.monotonic()
        big_sdns = start_sdns(args.services, stack)
        load_seconds = time.monotonic() - started
        loaded_rss = rss_mb(big_sdns.process.pid)
        # one sdns for each first pass over the wide names after the first, loaded alike
        fresh_sdns = [big_sdns] + [start_sdns(args.services, stack)
                                   for _ in range(args.rounds - 1)]
        big_dnsmasq = Dnsmasq(args.services, workdir)
        stack.callback(big_dnsmasq.stop)
        big_knot = Knot(args.services, workdir)
        stack.callback(big_knot.stop)

        results: dict[str, dict[str, list[Run]]] = {}
        small = {"dnsmasq": Server(small_dnsmasq.port, small_dnsmasq.pid),
                 "knot": Server(small_knot.port, small_knot.pid),
                 "sdns": Server(small_sdns.dns_port, small_sdns.process.pid)}
        big = {"dnsmasq": Server(big_dnsmasq.port, big_dnsmasq.pid),
               "knot": Server(big_knot.port, big_knot.pid),
               "sdns": Server(big_sdns.dns_port, big_sdns.process.pid)}
        results["hot"] = compare(small, files["hot"], args.rounds, args.seconds)
        fresh = [big | {"sdns": Server(process.dns_port, process.process.pid)}
                 for process in fresh_sdns]
        cold_wide = first_passes([(servers, files["wide"]) for servers in fresh])
        # the same names asked with EDNS: questions of that form are asked for the first time
        cold_edns = first_passes([(servers, files["wide"]) for servers in fresh], edns=True)
        # and as glibc asks, where each AAAA (no data) is asked for the first time
        cold_glibc = first_passes([(servers, files["glibc"]) for servers in fresh])
        for process in fresh_sdns[1:]:
            process.stop()
        results["wide"] = compare(big, files["wide"], args.rounds, args.seconds)
        cold_negative = first_passes([
            (big, files[f"negative-{n}" if n else "negative"]) for n in range(args.rounds)])
        results["negative"] = compare(big, files["negative"], args.rounds, args.seconds)
        flooded_rss = rss_mb(big_sdns.process.pid)
        results[f"hot, {args.services:,} registered"] = compare(
            big, files["hot"], args.rounds, args.seconds)

        # p99 at half of dnsmasq's best rate on the hot mix
        # (one run each had sdns ahead in one full run and behind in the next: repeat it too)
        rate = int(median([r.qps for r in results["hot"]["dnsmasq"]]) / 2)
        p99s: dict[str, list[float]] = {name: [] for name in small}
        for _ in range(args.rounds):
            for name, server in small.items():
                latencies = dnsperf(server, files["hot"], args.seconds, rate, verbose=True)[1]
                p99s[name].append(percentile(latencies, 99))
        p99 = {name: median(values) for name, values in p99s.items()}

        rows, chart_rows = [], []
        for mix, runs in results.items():
            qps = {name: median([r.qps for r in rs]) for name, rs in runs.items()}
            per_core = {name: per_cpu_second(rs) for name, rs in runs.items()}
            for name, rs in runs.items():
                rows.append((mix, name, f"{qps[name]:,.0f}", max(r.lost for r in rs),
                             f"{median([r.avg_ms for r in rs]):.3f}",
                             f"{median([r.cpu for r in rs]):.2f}",
                             f"{qps[name] / qps['dnsmasq']:.2f}x",
                             f"{per_core[name] / per_core['dnsmasq']:.2f}x",
                             f"{per_core[name] / per_core['knot']:.2f}x"))
            chart_rows.append((mix, qps["dnsmasq"], qps["sdns"]))
        hot_qps = median([r.qps for r in results["hot"]["sdns"]])
        scale_qps = median([r.qps for r in results[f"hot, {args.services:,} registered"]["sdns"]])
        endpoints = args.services * 3
        per_endpoint_kb = (loaded_rss - baseline_rss) * 1024 / endpoints
        png = ROOT / "docs" / "bench-dns.png"
        chart(chart_rows, png)
        wide_qps = median([r.qps for r in results["wide"]["sdns"]])
        cold_qps = median([r.qps for r in cold_wide["sdns"]])
        summary = [
            (f"cold: first pass over the {args.services:,} names of the wide mix, never asked "
             "before (sdns / its own warm wide rate)",
             f"{cold_qps:,.0f} QPS / {wide_qps:,.0f} = {cold_qps / wide_qps:.2f}x (passes: "
             f"{_each((r.qps for r in cold_wide['sdns']), ',.0f')})", ">= 0.8x"),
            ("cold, per server CPU second: sdns / Knot / dnsmasq",
             _cold(cold_wide), "sdns >= Knot"),
            ("first pass over the wide mix asked with EDNS (dnsperf -e, as Go's resolver "
             "asks), per server CPU second: sdns / Knot / dnsmasq", _cold(cold_edns), ""),
            ("first pass as glibc asks (A, then AAAA, of each wide name; the services have "
             "IPv4 addresses only), per server CPU second: sdns / Knot / dnsmasq",
             _cold(cold_glibc), ""),
            (f"first pass of the negative mix ({RANDOM_NAMES:,} random names each asked once, "
             "and search-path names), per server CPU second: sdns / Knot / dnsmasq",
             _cold(cold_negative), "sdns >= Knot"),
            ("sdns/dnsmasq, hot mix", f"{chart_rows[0][2] / chart_rows[0][1]:.2f}x", ">= 1.0x"),
            ("sdns/dnsmasq, wide mix", f"{chart_rows[1][2] / chart_rows[1][1]:.2f}x", ">= 2.0x"),
            ("sdns/dnsmasq, negative mix", f"{chart_rows[2][2] / chart_rows[2][1]:.2f}x",
             ">= 2.0x"),
            ("p99 latency at half dnsmasq's hot rate "
             f"({rate:,} QPS): sdns / dnsmasq",
             f"{p99['sdns']:.3f} / {p99['dnsmasq']:.3f} ms (rounds: "
             f"{_each(p99s['sdns'])} / {_each(p99s['dnsmasq'])})", "sdns <= dnsmasq"),
            (f"hot mix QPS with {args.services:,} services / with {HOT}",
             f"{scale_qps / hot_qps:.2f}x", ">= 0.9x"),
            ("RSS per endpoint beyond the baseline",
             f"{per_endpoint_kb:.2f} KB ({baseline_rss:.0f} MB -> {loaded_rss:.0f} MB "
             f"for {endpoints:,} endpoints)", "<= 1 KB"),
            (f"RSS after the negative mix ({args.rounds} first passes of {RANDOM_NAMES:,} "
             "random names each, and the warm rounds), against RSS once loaded plus 1.2x the "
             f"default --cache-mb ({CACHE_MB} MiB)",
             f"{flooded_rss:.0f} MB / {loaded_rss:.0f} + {1.2 * CACHE_MB:.0f} = "
             f"{loaded_rss + 1.2 * CACHE_MB:.0f} MB", "at most the second"),
            ("peak RSS after every mix, sdns / dnsmasq",
             f"{peak_rss_mb(big_sdns.process.pid):.0f} / {peak_rss_mb(big_dnsmasq.pid):.0f} MB",
             ""),
            (f"loading {args.services:,} services and {endpoints:,} endpoints over HTTP",
             f"{load_seconds:.0f} s", ""),
        ]
    command = (f"python -m bench qps --services {args.services} --rounds {args.rounds} "
               f"--seconds {args.seconds}")
    write_section("dns", "\n\n".join([
        "## DNS: sdns against dnsmasq and Knot",
        f"`{command}` on {platform.node()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d')}. dnsperf -c {CLIENTS} -q {OUTSTANDING} on core 1, the "
        "server on core 0, memory backend; medians of the rounds, each round running "
        "dnsmasq, Knot (one UDP worker) and sdns on the same query file. Lost is the worst "
        f"round. Cold figures are medians of {args.rounds} first passes, alternating the "
        "servers; each pass over the wide names asks an sdns loaded for it alone, and each "
        "pass of the negative mix has random names of its own. The passes are listed in "
        "order, as sdns / Knot / dnsmasq.",
        table(["mix", "server", "QPS", "lost", "avg latency ms", "server CPU, cores",
               "QPS vs dnsmasq", "QPS per CPU second vs dnsmasq",
               "QPS per CPU second vs Knot"], rows),
        table(["figure", "measured", "target"], summary),
        f"![sdns vs dnsmasq]({png.name})",
    ]))


if __name__ == "__main__":
    main()
