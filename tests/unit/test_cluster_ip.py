from __future__ import annotations

from sdns.cluster_ip import ClusterIPRange


def test_small_range_hands_out_every_host_address_once() -> None:
    cidr = ClusterIPRange("10.0.0.0/29")
    taken: set[str] = set()
    for _ in range(6):
        taken.add(next(cidr.free(taken)))
    assert taken == {f"10.0.0.{i}" for i in range(1, 7)}
    assert next(cidr.free(taken), None) is None


def test_membership() -> None:
    cidr = ClusterIPRange("10.96.0.0/12")
    assert "10.100.1.1" in cidr
    assert "10.96.0.0" not in cidr
    assert "10.111.255.255" not in cidr
    assert "10.112.0.1" not in cidr
    assert "fd00::1" not in cidr
    v6 = ClusterIPRange("fd00:96::/112")
    assert next(v6.free(set())) in v6
