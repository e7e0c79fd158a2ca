"""--cache-mb bounds what the DNS caches take: a flood of names each asked once grows the process
by no more than the bound (plus 20%), whichever path answers them."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import dns.edns
import dns.message

from bench.report import rss_mb
from tests.helpers.metrics import scrape, value
from tests.helpers.support import SdnsProcess

MakeSdns = Callable[..., SdnsProcess]

CACHE_MB = 8
FLOOD = 60_000  # about 40 MB of answers if nothing bounded them
IN_FLIGHT = 64
COOKIE = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"sdns-cbt")  # a client cookie


def _flood(port: int, names: list[str], seconds: float = 60) -> int:
    """Ask each name once over UDP, ``IN_FLIGHT`` at a time, every third with an EDNS cookie (as
    dig asks); how many were answered."""
    answered = 0
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        for start in range(0, len(names), IN_FLIGHT):
            assert time.monotonic() < deadline, f"the flood took over {seconds} s"
            chunk = names[start:start + IN_FLIGHT]
            for i, name in enumerate(chunk):
                options = [COOKIE] if (start + i) % 3 == 0 else None
                sock.sendto(dns.message.make_query(name, "A", id=i, options=options).to_wire(),
                            ("127.0.0.1", port))
            try:
                for _ in chunk:
                    sock.recv(512)
                    answered += 1
            except TimeoutError:
                pass  # a datagram lost on loopback is not what this test is about
    return answered


def test_a_flood_of_new_names_stays_within_the_cache_bound(make_sdns: MakeSdns) -> None:
    process = make_sdns("--cache-mb", str(CACHE_MB))
    process.api.put("/v1/services/default/web", {})
    # names the UDP thread answers (under a service that does not exist: from the query's bytes,
    # or with an EDNS option through the parser), and names only the loop's full path answers
    # (in the cluster zone but outside svc), alternately
    names = [f"r{i}.default.svc.cluster.local" if i % 2 else f"r{i}.x.r{i}.cluster.local"
             for i in range(FLOOD)]
    _flood(process.dns_port, names[:2_000])  # the paths have run once: code and buffers are in
    loaded = rss_mb(process.process.pid)
    assert _flood(process.dns_port, names) > 0.95 * FLOOD
    grown = rss_mb(process.process.pid) - loaded
    assert grown <= 1.2 * CACHE_MB, f"RSS grew {grown:.1f} MB with --cache-mb {CACHE_MB}"
    assert value(scrape(process.api.base), "sdns_cache_evictions_total") > 0  # it was reached
