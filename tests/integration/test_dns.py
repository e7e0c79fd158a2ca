"""DNS answers as dig and resolvers see them, from a real sdns process on every backend: the
wire, the transports and changes arriving from the store. The schema case by case is in
tests/unit/test_zone.py."""

from __future__ import annotations

import random
import socket
import struct
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.rrset
import pytest

from sdns.dns.server import TCP_IDLE_SECONDS
from tests.helpers.support import SdnsProcess, query, wait_until

ZONE = "svc.cluster.local"


def names(rrsets: list[dns.rrset.RRset]) -> list[tuple[str, str, str]]:
    return sorted((r.name.to_text(), dns.rdatatype.to_text(r.rdtype), rd.to_text())
                  for r in rrsets for rd in r)


def values(reply: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


def assert_negative(reply: dns.message.Message, rcode: int) -> None:
    """NXDOMAIN or NODATA as RFC 2308 wants it: no answer, the zone SOA in authority, AA."""
    assert reply.rcode() == rcode
    assert reply.answer == []
    assert [r.rdtype for r in reply.authority] == [dns.rdatatype.SOA]
    assert reply.flags & dns.flags.AA


@pytest.fixture
def web(sdns: SdnsProcess, ns: str) -> str:
    """A ClusterIP service `web` with two ports and one endpoint; answers its clusterIP."""
    body = {"ports": [{"name": "http", "port": 80, "targetPort": 8080},
                      {"name": "dns", "port": 53, "protocol": "UDP"}]}
    ip = sdns.api.put(f"/v1/services/{ns}/web", body).body["clusterIP"]
    sdns.api.put(f"/v1/services/{ns}/web/endpoints/e1", {"ip": "10.244.0.1"})
    return ip


@pytest.fixture
def headless(sdns: SdnsProcess, ns: str) -> None:
    """A headless service `db`: two ready endpoints (one IPv6), one not ready."""
    sdns.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None", "ports": [
        {"name": "sql", "port": 3306, "targetPort": 3306}]})
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/db-0", {"ip": "10.244.1.10",
                                                         "ports": {"sql": 13306}})
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/db-1", {"ip": "fd00::11", "hostname": "pet"})
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/db-2", {"ip": "10.244.1.12", "ready": False})


def test_cluster_ip_a_record_with_dig(sdns: SdnsProcess, ns: str, web: str,
                                      dig_available: None) -> None:
    assert sdns.dig("+short", f"web.{ns}.{ZONE}").split() == [web]
    full = sdns.dig("+noall", "+answer", f"web.{ns}.{ZONE}")
    assert full.split() == [f"web.{ns}.{ZONE}.", "5", "IN", "A", web]


def test_srv_with_dig_carries_the_a_record(sdns: SdnsProcess, ns: str, web: str,
                                           dig_available: None) -> None:
    out = sdns.dig("+noall", "+answer", "+additional", "SRV", f"_http._tcp.web.{ns}.{ZONE}")
    lines = [line.split() for line in out.strip().splitlines()]
    assert lines == [
        [f"_http._tcp.web.{ns}.{ZONE}.", "5", "IN", "SRV", "0", "100", "80", f"web.{ns}.{ZONE}."],
        [f"web.{ns}.{ZONE}.", "5", "IN", "A", web],
    ]


def test_ptr_for_cluster_ip(sdns: SdnsProcess, ns: str, web: str) -> None:
    reverse = ".".join(reversed(web.split("."))) + ".in-addr.arpa"
    assert values(sdns.query(reverse, "PTR")) == [f"web.{ns}.{ZONE}."]
    assert_negative(sdns.query(reverse, "A"), dns.rcode.NOERROR)


def test_headless_a_and_aaaa_list_ready_endpoints(sdns: SdnsProcess, ns: str,
                                                  headless: None) -> None:
    assert values(sdns.query(f"db.{ns}.{ZONE}")) == ["10.244.1.10"]
    assert values(sdns.query(f"db.{ns}.{ZONE}", "AAAA")) == ["fd00::11"]


def test_ptr_in_the_service_cidr_follows_what_holds_the_address(sdns: SdnsProcess,
                                                                ns: str) -> None:
    reverse = "7.250.96.10.in-addr.arpa"  # 10.96.250.7, inside the tests' 10.96.0.0/16
    assert_negative(sdns.query(reverse, "PTR"), dns.rcode.NXDOMAIN)  # cached as such
    sdns.api.put(f"/v1/services/{ns}/pinned", {"clusterIP": "10.96.250.7"})
    assert values(sdns.query(reverse, "PTR")) == [f"pinned.{ns}.{ZONE}."]
    sdns.api.delete(f"/v1/services/{ns}/pinned")
    assert_negative(sdns.query(reverse, "PTR"), dns.rcode.NXDOMAIN)

def test_external_name_inside_the_zone_follows_its_target(sdns: SdnsProcess, ns: str,
                                                          web: str) -> None:
    sdns.api.put(f"/v1/services/{ns}/alias", {"type": "ExternalName",
                                              "externalName": f"web.{ns}.{ZONE}"})
    reply = sdns.query(f"alias.{ns}.{ZONE}")
    assert names(reply.answer) == [(f"alias.{ns}.{ZONE}.", "CNAME", f"web.{ns}.{ZONE}."),
                                   (f"web.{ns}.{ZONE}.", "A", web)]
    sdns.api.delete(f"/v1/services/{ns}/web")  # the cached answer goes with its target
    gone = sdns.query(f"alias.{ns}.{ZONE}")
    assert gone.rcode() == dns.rcode.NXDOMAIN
    assert names(gone.answer) == [(f"alias.{ns}.{ZONE}.", "CNAME", f"web.{ns}.{ZONE}.")]

def test_dual_stack_service_answers_a_aaaa_and_both_ptrs(sdns: SdnsProcess, ns: str) -> None:
    created = sdns.api.put(f"/v1/services/{ns}/dual", {
        "ipFamilyPolicy": "PreferDualStack", "ports": [{"name": "http", "port": 80}]})
    assert created.status == 201, created.body
    v4, v6 = created.body["clusterIPs"]
    assert (created.body["clusterIP"], created.body["ipFamilies"]) == (v4, ["IPv4", "IPv6"])
    name = f"dual.{ns}.{ZONE}"
    assert values(sdns.query(name, "A")) == [v4]
    assert values(sdns.query(name, "AAAA")) == [v6]
    srv = sdns.query(f"_http._tcp.{name}", "SRV")
    assert names(srv.additional) == [(f"{name}.", "A", v4), (f"{name}.", "AAAA", v6)]
    for ip in (v4, v6):
        reverse = dns.reversename.from_address(ip).to_text()
        assert values(sdns.query(reverse, "PTR")) == [f"{name}."]
    assert sdns.api.delete(f"/v1/services/{ns}/dual").status == 204
    assert sdns.query(name, "AAAA").rcode() == dns.rcode.NXDOMAIN
    again = sdns.api.put(f"/v1/services/{ns}/again", {"clusterIP": v6})  # released with it
    assert again.status == 201, again.body

def test_headless_ptr_per_ready_endpoint(sdns: SdnsProcess, ns: str) -> None:
    sdns.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None"})
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/db-0", {"ip": "10.246.1.10"})
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/db-1", {"ip": "fd01::11", "hostname": "pet"})
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/db-2", {"ip": "10.246.1.12", "ready": False})
    assert values(sdns.query("10.1.246.10.in-addr.arpa", "PTR")) == [f"db-0.db.{ns}.{ZONE}."]
    v6 = ".".join(reversed("fd010000000000000000000000000011")) + ".ip6.arpa"
    assert values(sdns.query(v6, "PTR")) == [f"pet.db.{ns}.{ZONE}."]
    not_ready = sdns.query("12.1.246.10.in-addr.arpa", "PTR")
    assert not_ready.rcode() == dns.rcode.REFUSED  # not ours: forwarding is a later issue
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/db-2", {"ip": "10.246.1.12"})
    assert values(sdns.query("12.1.246.10.in-addr.arpa", "PTR")) == [f"db-2.db.{ns}.{ZONE}."]


def test_headless_without_ready_endpoints_is_nxdomain(sdns: SdnsProcess, ns: str) -> None:
    sdns.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None"})
    assert_negative(sdns.query(f"db.{ns}.{ZONE}"), dns.rcode.NXDOMAIN)
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/x", {"ip": "10.1.1.1", "ready": False})
    assert_negative(sdns.query(f"db.{ns}.{ZONE}"), dns.rcode.NXDOMAIN)
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/x", {"ip": "10.1.1.1"})
    assert values(sdns.query(f"db.{ns}.{ZONE}")) == ["10.1.1.1"]


def test_answers_keep_the_question_case(sdns: SdnsProcess, ns: str, web: str) -> None:
    name = f"WeB.{ns.upper()}.Svc.Cluster.LOCAL."
    reply = sdns.query(name)
    assert reply.question[0].name.to_text() == name
    assert [r.name.to_text() for r in reply.answer] == [name]
    assert values(reply) == [web]
    assert values(sdns.query(f"web.{ns}.{ZONE}")) == [web]


def test_record_ttl_and_authority(sdns: SdnsProcess, ns: str, web: str) -> None:
    reply = sdns.query(f"web.{ns}.{ZONE}")
    assert reply.answer[0].ttl == 5
    assert reply.flags & dns.flags.AA
    assert reply.flags & dns.flags.QR
    assert not reply.flags & dns.flags.TC


def test_rd_is_echoed(sdns: SdnsProcess, ns: str, web: str) -> None:
    with_rd = sdns.query(f"web.{ns}.{ZONE}")
    without = sdns.query(f"web.{ns}.{ZONE}", flags=0)
    assert with_rd.flags & dns.flags.RD
    assert not without.flags & dns.flags.RD


def test_names_outside_the_zone_are_refused(sdns: SdnsProcess) -> None:
    assert sdns.query("example.org").rcode() == dns.rcode.REFUSED


def test_changes_are_visible_when_the_api_returns(sdns: SdnsProcess, ns: str) -> None:
    for i in range(20):
        ip = f"10.244.9.{i + 1}"
        sdns.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None"})
        sdns.api.put(f"/v1/services/{ns}/db/endpoints/e", {"ip": ip})
        assert values(sdns.query(f"db.{ns}.{ZONE}")) == [ip]
        sdns.api.delete(f"/v1/services/{ns}/db")
        assert sdns.query(f"db.{ns}.{ZONE}").rcode() == dns.rcode.NXDOMAIN


def test_expired_endpoint_leaves_dns(sdns: SdnsProcess, ns: str) -> None:
    sdns.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None"})
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/e", {"ip": "10.244.8.1", "ttl": 1})
    assert values(sdns.query(f"db.{ns}.{ZONE}")) == ["10.244.8.1"]
    wait_until(lambda: sdns.query(f"db.{ns}.{ZONE}").rcode() == dns.rcode.NXDOMAIN,
               timeout=2.0)


# Transport, EDNS and truncation

def test_tcp_carries_several_queries_per_connection(sdns: SdnsProcess, ns: str,
                                                    web: str) -> None:
    with socket.create_connection(("127.0.0.1", sdns.dns_port), timeout=3) as conn:
        for qid in (1, 2, 3):
            message = dns.message.make_query(f"web.{ns}.{ZONE}", "A", id=qid).to_wire()
            conn.sendall(struct.pack(">H", len(message)) + message)
        for qid in (1, 2, 3):
            (length,) = struct.unpack(">H", _recv_exactly(conn, 2))
            reply = dns.message.from_wire(_recv_exactly(conn, length))
            assert reply.id == qid
            assert values(reply) == [web]


def test_tcp_idle_connection_is_closed(make_sdns) -> None:
    process = make_sdns()  # the transport does not depend on the backend: once is enough
    with socket.create_connection(("127.0.0.1", process.dns_port), timeout=30) as conn:
        start = time.monotonic()
        assert conn.recv(1) == b"", "closed by sdns, within the socket's 30 s deadline"
        assert time.monotonic() - start >= TCP_IDLE_SECONDS - 0.5, "not before it was idle"


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_edns_reply_advertises_our_payload_size(sdns: SdnsProcess, ns: str, web: str) -> None:
    reply = sdns.query(f"web.{ns}.{ZONE}", use_edns=0, payload=4096)
    assert reply.edns == 0
    assert reply.payload == 1232
    plain = sdns.query(f"web.{ns}.{ZONE}")
    assert plain.edns == -1


def test_edns_do_bit_is_echoed(sdns: SdnsProcess, ns: str, web: str) -> None:
    reply = sdns.query(f"web.{ns}.{ZONE}", want_dnssec=True)
    assert reply.ednsflags & dns.flags.DO


def test_unknown_edns_version_is_badvers(sdns: SdnsProcess, ns: str, web: str) -> None:
    reply = sdns.query(f"web.{ns}.{ZONE}", use_edns=1)
    assert reply.rcode() == dns.rcode.BADVERS


@pytest.fixture
def big(sdns: SdnsProcess, ns: str) -> int:
    """A headless service with 40 ready endpoints: over 512 bytes as an A answer."""
    sdns.api.put(f"/v1/services/{ns}/big", {"clusterIP": "None"})
    for i in range(40):
        sdns.api.put(f"/v1/services/{ns}/big/endpoints/e{i}", {"ip": f"10.245.0.{i + 1}"})
    return 40


def test_udp_answer_over_512_is_truncated(sdns: SdnsProcess, ns: str, big: int) -> None:
    reply = sdns.query(f"big.{ns}.{ZONE}")
    assert reply.flags & dns.flags.TC
    assert reply.answer == []
    assert reply.question[0].name.to_text() == f"big.{ns}.{ZONE}."


def test_tcp_returns_the_whole_answer(sdns: SdnsProcess, ns: str, big: int) -> None:
    reply = sdns.query(f"big.{ns}.{ZONE}", tcp=True)
    assert not reply.flags & dns.flags.TC
    assert len(values(reply)) == big


def test_edns_lets_the_answer_fit(sdns: SdnsProcess, ns: str, big: int) -> None:
    reply = sdns.query(f"big.{ns}.{ZONE}", use_edns=0, payload=1232)
    assert not reply.flags & dns.flags.TC
    assert len(values(reply)) == big
    small = sdns.query(f"big.{ns}.{ZONE}", use_edns=0, payload=512)
    assert small.flags & dns.flags.TC
    assert small.edns == 0


def test_dig_falls_back_to_tcp(sdns: SdnsProcess, ns: str, big: int,
                               dig_available: None) -> None:
    out = sdns.dig("+noedns", "+short", f"big.{ns}.{ZONE}")
    assert len(out.split()) == big


# Robustness

def _udp(port: int, payload: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def test_short_junk_is_dropped_and_service_goes_on(sdns: SdnsProcess, ns: str,
                                                   web: str) -> None:
    assert _udp(sdns.dns_port, b"\x01\x02\x03", timeout=0.5) is None
    assert _udp(sdns.dns_port, b"", timeout=0.5) is None
    assert values(sdns.query(f"web.{ns}.{ZONE}")) == [web]


def test_unreadable_question_is_formerr(sdns: SdnsProcess, ns: str, web: str) -> None:
    header = struct.pack(">HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
    for junk in (b"\x07exam", b"\xc0\x0c\x00\x01\x00\x01", b"\x03www\x00\x00"):
        reply = dns.message.from_wire(_udp(sdns.dns_port, header + junk))
        assert reply.id == 0xBEEF
        assert reply.rcode() == dns.rcode.FORMERR
    two = struct.pack(">HHHHHH", 7, 0x0100, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 2
    assert dns.message.from_wire(_udp(sdns.dns_port, two)).rcode() == dns.rcode.FORMERR
    assert values(sdns.query(f"web.{ns}.{ZONE}")) == [web]


def test_responses_are_not_answered(sdns: SdnsProcess, ns: str, web: str) -> None:
    message = dns.message.make_query(f"web.{ns}.{ZONE}", "A")
    message.flags |= dns.flags.QR
    assert _udp(sdns.dns_port, message.to_wire(), timeout=0.5) is None


def test_other_opcodes_are_notimp(sdns: SdnsProcess, ns: str, web: str) -> None:
    message = dns.message.make_query(f"web.{ns}.{ZONE}", "SOA")
    message.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(_udp(sdns.dns_port, message.to_wire()))
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.opcode() == dns.opcode.NOTIFY


def test_other_classes_and_zone_transfers_are_refused(sdns: SdnsProcess, ns: str,
                                                      web: str) -> None:
    chaos = dns.message.make_query(f"web.{ns}.{ZONE}", "A", rdclass="CH")
    assert dns.message.from_wire(_udp(sdns.dns_port, chaos.to_wire())).rcode() == \
        dns.rcode.REFUSED
    axfr = sdns.query("cluster.local", "AXFR", tcp=True)
    assert axfr.rcode() == dns.rcode.REFUSED


def test_random_packets_never_stop_the_server(sdns: SdnsProcess, ns: str, web: str) -> None:
    rng = random.Random(1053)
    good = dns.message.make_query(f"web.{ns}.{ZONE}", "A", use_edns=0).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(500):
            kind = rng.random()
            if kind < 0.4:
                packet = rng.randbytes(rng.randint(0, 120))
            else:  # a real query with a few bytes flipped or cut
                packet = bytearray(good)
                for _ in range(rng.randint(1, 4)):
                    packet[rng.randrange(len(packet))] = rng.randrange(256)
                packet = bytes(packet[:rng.randint(2, len(packet))])
            sock.sendto(packet, ("127.0.0.1", sdns.dns_port))
    time.sleep(0.2)
    assert values(query(sdns.dns_port, f"web.{ns}.{ZONE}")) == [web]
    assert values(sdns.query(f"web.{ns}.{ZONE}", tcp=True)) == [web]


def test_multi_address_answers_rotate(sdns: SdnsProcess, ns: str) -> None:
    sdns.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None"})
    ips = [f"10.247.0.{i}" for i in (1, 2, 3)]
    for i, ip in enumerate(ips):
        sdns.api.put(f"/v1/services/{ns}/db/endpoints/e{i}", {"ip": ip})
    orders = []
    for _ in range(6):
        reply = sdns.query(f"db.{ns}.{ZONE}")
        orders.append(tuple(rd.to_text() for rrset in reply.answer for rd in rrset))
    assert all(sorted(order) == ips for order in orders)
    assert {order[0] for order in orders} == set(ips)  # each address leads in turn
    tcp = sdns.query(f"db.{ns}.{ZONE}", tcp=True)
    assert sorted(rd.to_text() for rrset in tcp.answer for rd in rrset) == ips
