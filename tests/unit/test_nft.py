from __future__ import annotations

from sdns.balancer.nft import render
from sdns.balancer.table import Backend, Frontend
from sdns.model import Protocol, ServiceKey

KEY = ServiceKey("default", "web")


def test_render_spreads_with_numgen() -> None:
    frontends = [
        Frontend(KEY, "http", "10.96.0.10", 80, Protocol.TCP,
                 (Backend("a", "10.244.0.1", 8080), Backend("b", "10.244.0.2", 8080))),
        Frontend(KEY, "dns", "10.96.0.10", 53, Protocol.UDP, (Backend("a", "10.244.0.1", 53),)),
        Frontend(KEY, "none", "10.96.0.11", 81, Protocol.TCP, ()),
    ]
    script = render(frontends)
    assert script.startswith("table inet sdns\ndelete table inet sdns\n")
    assert ("ip daddr 10.96.0.10 tcp dport 80 numgen inc mod 2 vmap "
            "{ 0 : goto endpoint-0, 1 : goto endpoint-1 }") in script
    assert "  chain endpoint-0 {\n    meta l4proto tcp dnat ip to 10.244.0.1:8080\n  }" in script
    assert "  chain endpoint-1 {\n    meta l4proto tcp dnat ip to 10.244.0.2:8080\n  }" in script
    assert "ip daddr 10.96.0.10 udp dport 53 dnat ip to 10.244.0.1:53" in script
    assert "ip daddr 10.96.0.11 tcp dport 81 reject" in script
    assert "type nat hook output priority -100" in script
    assert "type nat hook prerouting priority -100" in script


def test_render_ipv6() -> None:
    frontend = Frontend(KEY, "http", "fd00::10", 80, Protocol.TCP,
                        (Backend("a", "fd00::1", 8080), Backend("v4", "10.0.0.1", 8080)))
    assert "ip6 daddr fd00::10 tcp dport 80 dnat ip6 to [fd00::1]:8080" in render([frontend])
