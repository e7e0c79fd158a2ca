"""Connections and bytes per second through the VIP balancer, as a ratio to connecting to the
endpoint directly in the same run: userspace on loopback, nftables in a network namespace.

The sink (endpoint) and the load client are separate processes; each load is bounded in time
(--seconds) and in count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import median, table, write_section
from tests.helpers.netns import Netns, missing_netns
from tests.helpers.support import SdnsProcess, free_port, wait_until

# args: host port. A reply of one byte per connection, or a sink for a stream.
SINK = """
import socket, sys, threading
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[1], int(sys.argv[2]))); sock.listen(1024)
def serve(conn):
    with conn:
        first = conn.recv(65536)
        if first == b"c":
            conn.sendall(b"k")
            return
        while conn.recv(1 << 20):
            pass
while True:
    conn, _ = sock.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# args: host port seconds. Prints {"conns": per second, "bytes": per second}.
LOAD = """
import json, socket, sys, threading, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def connections(counts, deadline):
    n = 0
    while time.monotonic() < deadline and n < 1_000_000:
        with socket.create_connection((host, port)) as conn:
            conn.sendall(b"c")
            conn.recv(1)
        n += 1
    counts.append(n)
counts, deadline = [], time.monotonic() + seconds
threads = [threading.Thread(target=connections, args=(counts, deadline)) for _ in range(4)]
start = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
conns = sum(counts) / (time.monotonic() - start)
chunk, sent = b"x" * (1 << 20), 0
with socket.create_connection((host, port)) as conn:
    start = time.monotonic()
    while time.monotonic() - start < seconds and sent < 1 << 40:
        conn.sendall(chunk)
        sent += len(chunk)
    elapsed = time.monotonic() - start
print(json.dumps({"conns": conns, "bytes": sent / elapsed}))
"""


ROUNDS = 3


def _load(run: list[str], host: str, port: int, seconds: int) -> dict[str, float]:
    out = subprocess.run([*run, sys.executable, "-c", LOAD, host, str(port), str(seconds)],
                         capture_output=True, text=True, check=True, timeout=seconds * 4 + 30)
    return json.loads(out.stdout)


def _compare(run: list[str], direct: tuple[str, int], vip: tuple[str, int], seconds: int
             ) -> tuple[dict[str, float], dict[str, float]]:
    """Medians over ROUNDS rounds, each loading the endpoint directly and then the VIP."""
    rounds = [(_load(run, *direct, seconds), _load(run, *vip, seconds)) for _ in range(ROUNDS)]
    return tuple({key: median([r[side][key] for r in rounds]) for key in ("conns", "bytes")}
                 for side in (0, 1))  # type: ignore[return-value]


def userspace(seconds: int) -> tuple[dict[str, float], dict[str, float]]:
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, "127.0.0.1", str(port)])
    process = SdnsProcess("--balancer", "userspace", "--service-cidr", "127.96.0.0/16").start()
    try:
        vip = process.api.put("/v1/services/bench/sink", {"ports": [
            {"name": "tcp", "port": 9000}]}).body["clusterIP"]
        process.api.put("/v1/services/bench/sink/endpoints/e", {"ip": "127.0.0.1",
                                                                "ports": {"tcp": port}})
        wait_until(lambda: process.api.get("/v1/balancer").body["services"][0]["serving"], 5)
        return _compare([], ("127.0.0.1", port), (vip, 9000), seconds)
    finally:
        process.stop()
        sink.terminate()


def nftables(seconds: int, workdir: Path) -> tuple[dict[str, float], dict[str, float]] | str:
    reason = missing_netns() or (None if shutil.which("nft") else "nft is not installed")
    if reason:
        return reason
    netns = Netns(f"sdns-bench-{os.getpid()}")
    try:
        netns.run("ip", "addr", "add", "10.244.5.1/32", "dev", "lo")
        netns.start(sys.executable, "-c", SINK, "10.244.5.1", "8080", log=workdir / "sink.log")
        api = netns.start_sdns("--forward", "off", "--balancer", "nftables",
                               log=workdir / "sdns.log")
        vip = json.loads(api("PUT", "/v1/services/bench/sink",
                             '{"ports": [{"name": "tcp", "port": 9000, "targetPort": 8080}]}')
                         )["clusterIP"]
        api("PUT", "/v1/services/bench/sink/endpoints/e", '{"ip": "10.244.5.1"}')
        time.sleep(0.5)
        run = ["ip", "netns", "exec", netns.name]
        return _compare(run, ("10.244.5.1", 8080), (vip, 9000), seconds)
    finally:
        netns.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdns-bench-") as tmp:
        results = {"userspace": userspace(args.seconds),
                   "nftables": nftables(args.seconds, Path(tmp))}
    for mode, result in results.items():
        if isinstance(result, str):
            rows.append((mode, f"not measured: {result}", "", "", ""))
            continue
        direct, through = result
        rows.append((mode, f"{through['conns']:,.0f} / {direct['conns']:,.0f}",
                     f"{through['conns'] / direct['conns']:.2f}x",
                     f"{through['bytes'] / 1e6:,.0f} / {direct['bytes'] / 1e6:,.0f}",
                     f"{through['bytes'] / direct['bytes']:.2f}x"))
    write_section("balancer", "\n\n".join([
        "## Balancer throughput",
        f"`python -m bench balancer --seconds {args.seconds}` on {platform.node()}, "
        f"{time.strftime('%Y-%m-%d')}: a Python client process (4 threads opening connections, "
        "then one connection streaming 1 MiB writes) against a Python sink process, straight "
        f"to the endpoint and through the VIP in turn, medians of {ROUNDS} rounds. Targets: "
        "userspace >= 0.5x direct throughput, nftables >= 0.9x.",
        table(["mode", "connections/s (VIP / direct)", "ratio",
               "MB/s (VIP / direct)", "ratio"], rows),
    ]))


if __name__ == "__main__":
    main()


