"""The Kubernetes DNS schema, case by case, in-process: a Responder over a Zone over a View
loaded with one set of services, asked with real DNS messages (dnspython) and read back the
same way. Adding a case costs a line and a millisecond; the process tests in
tests/integration/test_dns.py keep the wire, transport and backend paths."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import NamedTuple

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from sdns.dns import wire
from sdns.dns.responder import Responder
from sdns.dns.zone import Zone
from sdns.model import (
    Endpoint,
    Event,
    IPFamily,
    IPFamilyPolicy,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
)
from sdns.store import Snapshot
from sdns.view import View

NS = "default"
Z = "svc.cluster.local."
ZONE = "svc.cluster.local"
WEB = ServiceKey(NS, "web")
DB = ServiceKey(NS, "db")
NOBODY = ServiceKey(NS, "nobody")
EXT = ServiceKey(NS, "ext")
WIDE = ServiceKey(NS, "wide")
# hostnames long enough that the SRV answer of "wide" fits 512 bytes, its addresses not
WIDE_HOSTS = [f"replica-{i:02d}-set" for i in range(6)]  # SRV targets are not compressed
BIG = ServiceKey(NS, "big")  # 40 addresses: over 512 bytes as an A answer


def _snapshot() -> Snapshot:
    return Snapshot(
        revision=1,
        services=[
            Service(NS, "web", ports=(ServicePort("http", 80, Protocol.TCP, 8080),
                                      ServicePort("dns", 53, Protocol.UDP)),
                    cluster_ips=("10.96.0.20",)),
            Service(NS, "db", ServiceType.HEADLESS, ports=(ServicePort("sql", 3306),)),
            Service(NS, "nobody", ServiceType.HEADLESS),
            Service(NS, "ext", ServiceType.EXTERNAL_NAME, external_name="db.example.org"),
            Service(NS, "wide", ServiceType.HEADLESS, ports=(ServicePort("sql", 3306),)),
            Service(NS, "big", ServiceType.HEADLESS),
            *(Service(NS, name, ServiceType.EXTERNAL_NAME, external_name=f"{target}.{NS}.{ZONE}")
              for name, target in [("to-web", "web"), ("to-db", "db"), ("to-gone", "gone"),
                                   ("to-to-web", "to-web"), ("loop-a", "loop-b"),
                                   ("loop-b", "loop-a"),
                                   *((f"chain-{i}", f"chain-{i + 1}") for i in range(10))]),
        ],
        endpoints={
            WEB: [Endpoint("e1", "10.244.0.1", "e1")],
            DB: [Endpoint("db-0", "10.244.1.10", "db-0", ports=(("sql", 13306),)),
                 Endpoint("db-1", "fd00::11", "pet"),
                 Endpoint("db-2", "10.244.1.12", "db-2", ready=False)],
            NOBODY: [Endpoint("x", "10.244.2.1", "x", ready=False)],
            WIDE: [Endpoint(f"w{i}", f"10.244.5.{i}", host) for i, host in enumerate(WIDE_HOSTS)],
            BIG: [Endpoint(f"b{i}", f"10.244.6.{i}", f"b{i}") for i in range(40)],
        },
    )


@pytest.fixture(scope="module")
def responder() -> Responder:
    return _responder()


def _responder() -> Responder:
    view = View()
    view.load(_snapshot())
    return Responder(Zone("cluster.local", 5, view, nameserver="10.96.0.53",
                          service_networks=(ipaddress.ip_network("10.96.0.0/16"),
                                            ipaddress.ip_network("fd96::/112"))),
                     cache_bytes=1 << 24)


def ask(responder: Responder, name: str, rdtype: str) -> dns.message.Message | None:
    """The reply, or None when sdns hands the query on to forwarding."""
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
    reply = responder.reply(query.to_wire(), udp=False)
    if isinstance(reply, wire.Query):
        return None
    assert reply is not None
    return dns.message.from_wire(reply)


def records(section: list) -> list[str]:
    return sorted(f"{rrset.name} {rrset.ttl} {dns.rdatatype.to_text(rrset.rdtype)} {rd}"
                  for rrset in section for rd in rrset)


class Case(NamedTuple):
    name: str
    rdtype: str
    rcode: str  # NOERROR with no answer is NODATA
    answer: Sequence[str] = ()
    additional: Sequence[str] = ()
    nodata_after_cname: bool = False


CASES = [
    # ClusterIP service: A, SRV per port and protocol, nothing per endpoint
    Case(f"web.{NS}.{Z}", "A", "NOERROR", [f"web.{NS}.{Z} 5 A 10.96.0.20"]),
    Case(f"WeB.{NS}.Svc.Cluster.Local.", "A", "NOERROR",
         [f"WeB.{NS}.Svc.Cluster.Local. 5 A 10.96.0.20"]),
    Case(f"web.{NS}.{Z}", "AAAA", "NOERROR"),
    Case(f"web.{NS}.{Z}", "TXT", "NOERROR"),
    Case(f"web.{NS}.{Z}", "ANY", "NOERROR", [f"web.{NS}.{Z} 5 A 10.96.0.20"]),
    Case(f"_http._tcp.web.{NS}.{Z}", "SRV", "NOERROR",
         [f"_http._tcp.web.{NS}.{Z} 5 SRV 0 100 80 web.{NS}.{Z}"],
         [f"web.{NS}.{Z} 5 A 10.96.0.20"]),
    Case(f"_dns._udp.web.{NS}.{Z}", "SRV", "NOERROR",
         [f"_dns._udp.web.{NS}.{Z} 5 SRV 0 100 53 web.{NS}.{Z}"],
         [f"web.{NS}.{Z} 5 A 10.96.0.20"]),
    Case(f"_http._udp.web.{NS}.{Z}", "SRV", "NXDOMAIN"),
    Case(f"_nope._tcp.web.{NS}.{Z}", "SRV", "NXDOMAIN"),
    Case(f"_tcp.web.{NS}.{Z}", "SRV", "NOERROR"),
    Case(f"_sctp.web.{NS}.{Z}", "SRV", "NXDOMAIN"),
    Case(f"_http._tcp.web.{NS}.{Z}", "A", "NOERROR"),
    Case(f"e1.web.{NS}.{Z}", "A", "NXDOMAIN"),
    Case(f"a.b.c.web.{NS}.{Z}", "A", "NXDOMAIN"),
    # headless: every ready endpoint, by hostname too; SRV per hostname and port
    Case(f"db.{NS}.{Z}", "A", "NOERROR", [f"db.{NS}.{Z} 5 A 10.244.1.10"]),
    Case(f"db.{NS}.{Z}", "AAAA", "NOERROR", [f"db.{NS}.{Z} 5 AAAA fd00::11"]),
    Case(f"db-0.db.{NS}.{Z}", "A", "NOERROR", [f"db-0.db.{NS}.{Z} 5 A 10.244.1.10"]),
    Case(f"pet.db.{NS}.{Z}", "AAAA", "NOERROR", [f"pet.db.{NS}.{Z} 5 AAAA fd00::11"]),
    Case(f"pet.db.{NS}.{Z}", "A", "NOERROR"),
    Case(f"db-1.db.{NS}.{Z}", "A", "NXDOMAIN"),  # its hostname is "pet"
    Case(f"db-2.db.{NS}.{Z}", "A", "NXDOMAIN"),  # not ready
    Case(f"_sql._tcp.db.{NS}.{Z}", "SRV", "NOERROR",
         [f"_sql._tcp.db.{NS}.{Z} 5 SRV 0 100 13306 db-0.db.{NS}.{Z}",
          f"_sql._tcp.db.{NS}.{Z} 5 SRV 0 100 3306 pet.db.{NS}.{Z}"],
         [f"db-0.db.{NS}.{Z} 5 A 10.244.1.10", f"pet.db.{NS}.{Z} 5 AAAA fd00::11"]),
    Case(f"nobody.{NS}.{Z}", "A", "NXDOMAIN"),  # headless without a ready endpoint
    Case(f"_x._tcp.nobody.{NS}.{Z}", "SRV", "NXDOMAIN"),
    # ExternalName: a CNAME whatever the type
    Case(f"ext.{NS}.{Z}", "A", "NOERROR", [f"ext.{NS}.{Z} 5 CNAME db.example.org."]),
    Case(f"ext.{NS}.{Z}", "AAAA", "NOERROR", [f"ext.{NS}.{Z} 5 CNAME db.example.org."]),
    Case(f"ext.{NS}.{Z}", "CNAME", "NOERROR", [f"ext.{NS}.{Z} 5 CNAME db.example.org."]),
    Case(f"_http._tcp.ext.{NS}.{Z}", "SRV", "NXDOMAIN"),
    # ExternalName inside the zone: the CNAME, then the target's records (RFC 1034 4.3.2)
    Case(f"to-web.{NS}.{Z}", "A", "NOERROR", [f"to-web.{NS}.{Z} 5 CNAME web.{NS}.{Z}",
                                               f"web.{NS}.{Z} 5 A 10.96.0.20"]),
    Case(f"to-to-web.{NS}.{Z}", "A", "NOERROR", [f"to-to-web.{NS}.{Z} 5 CNAME to-web.{NS}.{Z}",
                                                  f"to-web.{NS}.{Z} 5 CNAME web.{NS}.{Z}",
                                                  f"web.{NS}.{Z} 5 A 10.96.0.20"]),
    Case(f"to-db.{NS}.{Z}", "AAAA", "NOERROR", [f"to-db.{NS}.{Z} 5 CNAME db.{NS}.{Z}",
                                                 f"db.{NS}.{Z} 5 AAAA fd00::11"]),
    Case(f"to-web.{NS}.{Z}", "AAAA", "NOERROR", [f"to-web.{NS}.{Z} 5 CNAME web.{NS}.{Z}"],
         nodata_after_cname=True),
    Case(f"to-web.{NS}.{Z}", "CNAME", "NOERROR", [f"to-web.{NS}.{Z} 5 CNAME web.{NS}.{Z}"]),
    Case(f"to-gone.{NS}.{Z}", "A", "NXDOMAIN", [f"to-gone.{NS}.{Z} 5 CNAME gone.{NS}.{Z}"]),
    Case(f"loop-a.{NS}.{Z}", "A", "NOERROR", [f"loop-a.{NS}.{Z} 5 CNAME loop-b.{NS}.{Z}",
                                               f"loop-b.{NS}.{Z} 5 CNAME loop-a.{NS}.{Z}"]),
    Case(f"chain-0.{NS}.{Z}", "A", "NOERROR",
         [f"chain-{i}.{NS}.{Z} 5 CNAME chain-{i + 1}.{NS}.{Z}" for i in range(8)]),
    # names that exist without records, and names that do not exist
    Case(f"{NS}.{Z}", "A", "NOERROR"),
    Case(Z, "A", "NOERROR"),
    Case(f"nope.{NS}.{Z}", "A", "NXDOMAIN"),
    Case(f"nope.{NS}.{Z}", "ANY", "NXDOMAIN"),
    Case(f"no-such-namespace.{Z}", "A", "NXDOMAIN"),
    Case("nothing.cluster.local.", "A", "NXDOMAIN"),
    # pods, the apex, the schema version
    Case("10-244-3-4.anyns.pod.cluster.local.", "A", "NOERROR",
         ["10-244-3-4.anyns.pod.cluster.local. 5 A 10.244.3.4"]),
    Case("fd00--1.anyns.pod.cluster.local.", "AAAA", "NOERROR",
         ["fd00--1.anyns.pod.cluster.local. 5 AAAA fd00::1"]),
    Case("10-244-3-400.anyns.pod.cluster.local.", "A", "NXDOMAIN"),
    Case("anyns.pod.cluster.local.", "A", "NOERROR"),
    Case("dns-version.cluster.local.", "TXT", "NOERROR",
         ['dns-version.cluster.local. 5 TXT "1.1.0"']),
    Case("cluster.local.", "NS", "NOERROR", ["cluster.local. 5 NS ns.dns.cluster.local."]),
    Case("ns.dns.cluster.local.", "A", "NOERROR", ["ns.dns.cluster.local. 5 A 10.96.0.53"]),
    # reverse names of what sdns holds
    Case("20.0.96.10.in-addr.arpa.", "PTR", "NOERROR",
         [f"20.0.96.10.in-addr.arpa. 5 PTR web.{NS}.{Z}"]),
    Case("20.0.96.10.in-addr.arpa.", "A", "NOERROR"),
    Case("10.1.244.10.in-addr.arpa.", "PTR", "NOERROR",
         [f"10.1.244.10.in-addr.arpa. 5 PTR db-0.db.{NS}.{Z}"]),
    Case(".".join(reversed("fd000000000000000000000000000011")) + ".ip6.arpa.", "PTR",
         "NOERROR", [".".join(reversed("fd000000000000000000000000000011"))
                     + f".ip6.arpa. 5 PTR pet.db.{NS}.{Z}"]),
    # the service CIDRs' reverse names are ours: an address nobody holds does not exist
    Case("21.0.96.10.in-addr.arpa.", "PTR", "NXDOMAIN"),
    Case("255.255.96.10.in-addr.arpa.", "PTR", "NXDOMAIN"),
    Case(".".join(reversed("fd960000000000000000000000000001")) + ".ip6.arpa.", "PTR",
         "NXDOMAIN"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.name} {c.rdtype}" for c in CASES])
def test_schema(responder: Responder, case: Case) -> None:
    reply = ask(responder, case.name, case.rdtype)
    assert reply is not None, "handed on to forwarding"
    assert dns.rcode.to_text(reply.rcode()) == case.rcode
    assert reply.flags & dns.flags.AA
    assert records(reply.answer) == sorted(case.answer)
    assert records(reply.additional) == sorted(case.additional)
    # NXDOMAIN and NODATA carry the zone's SOA (RFC 2308), after any CNAMEs
    if case.rcode == "NXDOMAIN" or not case.answer or case.nodata_after_cname:
        assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]
    else:
        assert reply.authority == []


FORWARDED = [
    ("example.org.", "A"),
    ("12.1.244.10.in-addr.arpa.", "PTR"),  # a not-ready endpoint's address is not ours
    ("1.0.0.127.in-addr.arpa.", "PTR"),
    ("0.0.97.10.in-addr.arpa.", "PTR"),  # just past the service CIDR
    ("96.10.in-addr.arpa.", "PTR"),  # not an address
]


@pytest.mark.parametrize(("name", "rdtype"), FORWARDED)
def test_names_sdns_does_not_hold_go_to_forwarding(responder: Responder, name: str,
                                                   rdtype: str) -> None:
    assert ask(responder, name, rdtype) is None


def ask_udp(responder: Responder, name: str, rdtype: str, **make: object
            ) -> tuple[int, dns.message.Message]:
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), **make)
    reply = responder.reply(query.to_wire(), udp=True)
    assert isinstance(reply, bytes)
    return len(reply), dns.message.from_wire(reply)


@pytest.mark.parametrize("edns", [{}, {"use_edns": 0, "payload": 512}])
def test_udp_drops_additional_records_that_do_not_fit_without_tc(responder: Responder,
                                                                   edns: dict) -> None:
    """RFC 2181 section 9: TC says the answer is incomplete, not the additional section."""
    size, reply = ask_udp(responder, f"_sql._tcp.wide.{NS}.{Z}", "SRV", **edns)
    assert size <= 512
    assert not reply.flags & dns.flags.TC
    assert len(records(reply.answer)) == len(WIDE_HOSTS)
    assert reply.additional == []
    assert (reply.edns == 0) == bool(edns)
    _, whole = ask_udp(responder, f"_sql._tcp.wide.{NS}.{Z}", "SRV", use_edns=0, payload=1232)
    assert len(records(whole.additional)) == len(WIDE_HOSTS)


def test_udp_sets_tc_when_the_answer_itself_does_not_fit(responder: Responder) -> None:
    size, reply = ask_udp(responder, f"big.{NS}.{Z}", "A")
    assert size <= 512
    assert reply.flags & dns.flags.TC
    assert reply.answer == []
    _, whole = ask_udp(responder, f"big.{NS}.{Z}", "A", use_edns=0, payload=1232)
    assert not whole.flags & dns.flags.TC
    assert len(records(whole.answer)) == 40


QUICK = [*CASES, Case(f"WEB.{NS}.{Z}", "AAAA", "NOERROR"),
         Case(f"x.nope.{NS}.{Z}", "TXT", "NXDOMAIN"), Case(f"nope.{NS}.{Z}", "AXFR", "REFUSED"),
         Case(f"nope.{NS}.{Z}", "ANY", "NXDOMAIN")]


@pytest.mark.parametrize("case", QUICK, ids=[f"{c.name} {c.rdtype}" for c in QUICK])
def test_a_first_answer_on_the_udp_thread_is_the_loops_to_the_byte(case: Case) -> None:
    """The UDP thread makes the commonest first answers itself (Zone.quick); where it does,
    they are exactly what the loop's full path makes, and where it does not, the loop does."""
    for use_edns in (False, 0):
        data = dns.message.make_query(case.name, dns.rdatatype.from_text(case.rdtype),
                                      use_edns=use_edns, id=4321).to_wire()
        quick = _responder().cached_reply(data)
        full = _responder().reply(data, udp=True)
        if quick is not None:
            assert quick == full
    if case.name in (f"web.{NS}.{Z}", f"nope.{NS}.{Z}") and case.rdtype in ("A", "AAAA"):
        assert quick is not None  # these are what it is for


def test_first_answers_made_on_the_udp_thread_follow_changes() -> None:
    """A first answer the UDP thread makes is kept as a whole reply; the change that alters it
    (a new clusterIP, a service that appears) stops it being served, as the watcher applies it."""
    responder = _responder()
    ask_web = dns.message.make_query(f"web.{NS}.{Z}", "A", id=1).to_wire()
    ask_new = dns.message.make_query(f"new.{NS}.{Z}", "A", id=2).to_wire()

    def served(data: bytes) -> tuple[str, list[str]]:
        reply = responder.cached_reply(data)
        assert reply is not None
        message = dns.message.from_wire(reply)
        return dns.rcode.to_text(message.rcode()), [rd.address for rrset in message.answer
                                                    for rd in rrset]

    for _ in range(2):  # made, then from the packet cache
        assert served(ask_web) == ("NOERROR", ["10.96.0.20"])
        assert served(ask_new) == ("NXDOMAIN", [])
    with responder.zone.view.lock:  # as the watcher applies a change
        for event in (Event(2, "put", WEB, value=Service(NS, "web",
                                                               cluster_ips=("10.96.0.21",))),
                      Event(3, "put", ServiceKey(NS, "new"),
                            value=Service(NS, "new", cluster_ips=("10.96.0.22",)))):
            responder.changed(responder.zone.view.apply(event))
    assert served(ask_web) == ("NOERROR", ["10.96.0.21"])
    assert served(ask_new) == ("NOERROR", ["10.96.0.22"])


def test_prepared_replies_are_first_answers_made_before_the_question() -> None:
    """A ClusterIP service's address, asked as stub resolvers ask (RD, no EDNS, lowercase),
    is answered from a reply made when the change was applied: the same bytes as the first
    answer made on the UDP thread, following every change, gone with the service."""
    responder = _responder()
    with responder.zone.view.lock:  # as the watcher does after loading
        responder.reloaded()
    dual = Service(NS, "dual", cluster_ips=("10.96.0.30", "fd96::30"),
                   ip_families=(IPFamily.IPV4, IPFamily.IPV6),
                   ip_family_policy=IPFamilyPolicy.REQUIRE_DUAL_STACK)

    def apply(*events: Event) -> None:
        with responder.zone.view.lock:
            for event in events:
                responder.changed(responder.zone.view.apply(event))

    def asked(name: str, rdtype: str) -> tuple[bytes, bytes | None]:
        data = dns.message.make_query(f"{name}.{NS}.{Z}", rdtype, id=77).to_wire()
        return data, responder.prepared.get(data[2:])

    def check(name: str, rdtype: str, addresses: list[str]) -> None:
        data, ready = asked(name, rdtype)
        assert ready is not None
        first = Responder(responder.zone, cache_bytes=1 << 24).cached_reply(data)
        assert responder.cached_reply(data) == data[:2] + ready == first
        message = dns.message.from_wire(first)
        assert [rd.address for rrset in message.answer for rd in rrset] == addresses
        # with a plain OPT record (Go's resolver, dnspython), DO or not: the same reply with
        # our OPT, made from the prepared one (so not kept in the packet cache)
        for dnssec in (False, True):
            edns = dns.message.make_query(f"{name}.{NS}.{Z}", rdtype, id=78, use_edns=0,
                                          want_dnssec=dnssec).to_wire()
            parsed = Responder(responder.zone, cache_bytes=1 << 24).cached_reply(edns)
            assert responder.cached_reply(edns) == parsed
            assert responder.packets.get(edns[2:]) is None
            message = dns.message.from_wire(parsed)
            assert [rd.address for rrset in message.answer for rd in rrset] == addresses
            assert message.edns == 0 and bool(message.ednsflags & dns.flags.DO) == dnssec

    apply(Event(2, "put", dual.key, value=dual))
    check("web", "A", ["10.96.0.20"])
    check("dual", "A", ["10.96.0.30"])
    check("dual", "AAAA", ["fd96::30"])
    assert asked("web", "AAAA")[1] is None  # NODATA: made when asked
    assert asked("db", "A")[1] is None  # headless: its endpoints, made when asked
    apply(Event(3, "put", WEB, value=Service(NS, "web", cluster_ips=("10.96.0.21",))))
    check("web", "A", ["10.96.0.21"])
    apply(Event(4, "put", dual.key, value=Service(NS, "dual", ServiceType.HEADLESS)))
    assert asked("dual", "A")[1] is None and asked("dual", "AAAA")[1] is None
    apply(Event(5, "delete", WEB, "e1"), Event(6, "delete", WEB))
    assert asked("web", "A")[1] is None
    gone = responder.cached_reply(asked("web", "A")[0])
    assert gone is not None and dns.message.from_wire(gone).rcode() == dns.rcode.NXDOMAIN


def test_denials_under_missing_services_are_read_from_the_query_bytes() -> None:
    """A name under a service that does not exist, asked as stub resolvers ask, is denied
    straight from the query's bytes, with the same reply as the loop's parsed answer, whatever
    its type, letter case or depth; every other question takes the paths it took before."""
    responder = _responder()

    def stub(name: str, rdtype: str = "A") -> bytes:
        return dns.message.make_query(f"{name}.{Z}", rdtype, id=4242).to_wire()

    for name, rdtype in [("nx-9f3a", "A"), ("NX-Upper", "AAAA"), ("web.default", "A"),
                         ("_http._tcp.gone", "SRV"), ("a.b.gone", "TXT"), ("x", "CAA")]:
        for namespace in (NS, "elsewhere"):
            data = stub(f"{name}.{namespace}", rdtype)
            assert responder.zone.denies(data), (name, namespace)
            denied = responder.cached_reply(data)
            assert denied is not None and denied == responder.reply(data, True)
            message = dns.message.from_wire(denied)
            assert message.rcode() == dns.rcode.NXDOMAIN and message.id == 4242
            assert message.authority[0].rdtype == dns.rdatatype.SOA
    for data in [stub(f"web.{NS}"), stub(f"WEB.{NS}"), stub(f"_http._tcp.web.{NS}", "SRV"),
                 stub(f"a.b.web.{NS}", "TXT"), stub(NS), stub(f"nx.{NS}", "AXFR"),
                 stub(f"nx.{NS}", "IXFR"),
                 dns.message.make_query(f"nx.{NS}.{Z}", "A", "CH").to_wire(),
                 stub(f"nx.{NS}")[:12] + b"\xc0\x0c" + stub(f"nx.{NS}")[12:]]:
        assert not responder.zone.denies(data), data
    # with a plain OPT record, DO or not, denied from the bytes too, with our OPT; with an
    # option, another EDNS version or another flag, the parsed path answers (and keeps it)
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")
    for n, (edns, options, dnssec, flags, from_bytes) in enumerate([
            (0, None, False, dns.flags.RD, True), (0, None, True, dns.flags.RD, True),
            (0, [cookie], False, dns.flags.RD, False), (1, None, False, dns.flags.RD, False),
            (0, None, False, dns.flags.RD | dns.flags.AD, False)]):
        data = dns.message.make_query(f"nx{n}.{NS}.{Z}", "AAAA", id=99, use_edns=edns,
                                      options=options, want_dnssec=dnssec,
                                      flags=flags).to_wire()
        reply = responder.cached_reply(data)
        if reply is None:  # EDNS version 1: BADVERS, from the loop
            assert not from_bytes and responder.reply(data, True) is not None
            continue
        assert (responder.packets.get(data[2:]) is None) == from_bytes, n
        assert reply == responder.reply(data, True), n
        message = dns.message.from_wire(reply)
        assert message.rcode() == dns.rcode.NXDOMAIN and message.edns == 0
        assert bool(message.ednsflags & dns.flags.DO) == dnssec
    # asked again, a denial is made as other first answers are and kept in the packet cache
    data = stub(f"again.{NS}")
    first = responder.cached_reply(data)
    assert responder.packets.get(data[2:]) is None
    assert responder.cached_reply(data) == first and responder.packets.get(data[2:]) is not None
    assert responder.cached_reply(data) == first
    # a service that appears is no longer denied, nor served from what was kept
    data = stub(f"late.{NS}")
    for _ in range(3):
        assert dns.message.from_wire(responder.cached_reply(data)).rcode() == \
            dns.rcode.NXDOMAIN
    late = Service(NS, "late", cluster_ips=("10.96.0.40",))
    with responder.zone.view.lock:
        responder.changed(responder.zone.view.apply(Event(2, "put", late.key, value=late)))
    assert not responder.zone.denies(data)
    reply = dns.message.from_wire(responder.cached_reply(data))
    assert [rd.address for rrset in reply.answer for rd in rrset] == ["10.96.0.40"]


def test_no_data_for_a_family_a_service_lacks_is_read_from_the_query_bytes() -> None:
    """glibc asks AAAA beside A for every name. The address of a family that a ClusterIP
    service lacks, asked as stub resolvers ask, is denied from the query's bytes (NOERROR, no
    data, the SOA): the same reply as the loop's parsed answer, kept nowhere on a first ask.
    Every other question about an existing service takes the paths it took before."""
    responder = _responder()
    six = Service(NS, "six", cluster_ips=("fd96::40",), ip_families=(IPFamily.IPV6,))
    dual = Service(NS, "dual", cluster_ips=("10.96.0.30", "fd96::30"),
                   ip_families=(IPFamily.IPV4, IPFamily.IPV6),
                   ip_family_policy=IPFamilyPolicy.REQUIRE_DUAL_STACK)

    def apply(event: Event) -> None:
        with responder.zone.view.lock:
            responder.changed(responder.zone.view.apply(event))

    def stub(name: str, rdtype: str, **edns: object) -> bytes:
        return dns.message.make_query(f"{name}.{NS}.{Z}", rdtype, id=4343, **edns).to_wire()

    apply(Event(2, "put", six.key, value=six))
    apply(Event(3, "put", dual.key, value=dual))
    for name, rdtype in [("web", "AAAA"), ("WeB", "AAAA"), ("six", "A")]:
        data = stub(name, rdtype)
        assert responder.zone.denies(data) == dns.rcode.NOERROR, (name, rdtype)
        denied = responder.cached_reply(data)
        assert denied is not None and denied == responder.reply(data, True)
        assert responder.packets.get(data[2:]) is None
        message = dns.message.from_wire(denied)
        assert (message.rcode(), message.answer, message.id) == (dns.rcode.NOERROR, [], 4343)
        assert message.question[0].name.labels[0] == name.encode()  # the client's case
        assert message.authority[0].rdtype == dns.rdatatype.SOA
        # Go's resolver: the same, with our OPT record
        go = stub(name, rdtype, use_edns=0)
        assert responder.cached_reply(go) == responder.reply(go, True)
        assert responder.packets.get(go[2:]) is None
    for name, rdtype in [("web", "A"), ("six", "AAAA"), ("dual", "A"), ("dual", "AAAA"),
                         ("web", "TXT"), ("web", "MX"), ("db", "AAAA"), ("ext", "AAAA"),
                         ("e1.web", "AAAA")]:
        assert responder.zone.denies(stub(name, rdtype)) is None, (name, rdtype)
    # asked again, kept in the packet cache as other first answers are
    data = stub("web", "AAAA")
    first = responder.cached_reply(data)
    assert responder.packets.get(data[2:]) is not None
    assert responder.cached_reply(data) == first
    # a family the service gains is answered at once, and denied no longer
    apply(Event(4, "put", WEB, value=Service(NS, "web", cluster_ips=("10.96.0.20", "fd96::20"),
                                             ip_families=(IPFamily.IPV4, IPFamily.IPV6),
                                             ip_family_policy=IPFamilyPolicy.PREFER_DUAL_STACK)))
    assert responder.zone.denies(data) is None
    reply = dns.message.from_wire(responder.cached_reply(data))
    assert [rd.address for rrset in reply.answer for rd in rrset] == ["fd96::20"]
