"""The cluster zone: which records a name has, following the Kubernetes DNS-Based Service
Discovery schema 1.1.0, and which data each answer depends on (its tags), so the cache can drop
exactly the answers a change touches."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import NamedTuple

from dnslib import CNAME, NS, PTR, RR, SOA, SRV, TXT, DNSBuffer, DNSLabel

from sdns.dns import wire
from sdns.dns.wire import Rcode, RecordType
from sdns.model import (
    Endpoint,
    Protocol,
    Service,
    ServiceKey,
    ServiceType,
)
from sdns.view import Change, View

SCHEMA_VERSION = "1.1.0"
MAX_CNAMES = 8  # CNAMEs followed inside the zone for one answer
_REVERSE_V4 = (b"in-addr", b"arpa")
_REVERSE_V6 = (b"ip6", b"arpa")
_PROTOCOL_LABELS = {b"_" + p.value.lower().encode(): p for p in Protocol}
# plain ints for the UDP thread's first answers (``Zone.quick``): reading an enum member
# costs about 90 ns on Python 3.11
_A, _AAAA = int(RecordType.A), int(RecordType.AAAA)
_NOERROR, _NXDOMAIN = int(Rcode.NOERROR), int(Rcode.NXDOMAIN)
_CLUSTER_IP = ServiceType.CLUSTER_IP
_ZONE_TRANSFERS = frozenset({int(RecordType.AXFR), int(RecordType.IXFR)})
_CLASS_IN = struct.pack(">H", wire.CLASS_IN)

Tag = Hashable


@dataclass(frozen=True, slots=True)
class Soa:
    """A zone's SOA record in wire form, but for its owner name: negative answers (RFC 2308)
    point that at the zone's name inside the question, so they need no encoder at all."""

    zone: bytes  # the zone's name in wire form
    record: bytes  # type, class, TTL, length and data of the SOA record

    def owned_in(self, name_length: int) -> bytes:
        """The whole record, owned by the zone's name at the end of a question's name of
        ``name_length`` bytes: a compression pointer to it, then ``record``."""
        return struct.pack(">H", 0xC000 | (wire.HEADER + name_length - len(self.zone))) \
            + self.record

    @classmethod
    def of(cls, rr: RR) -> Soa:
        buffer = DNSBuffer()
        rr.rdata.pack(buffer)
        data = bytes(buffer.data)
        zone = wire.name(rr.rname.label)
        return cls(zone, struct.pack(">HHIH", RecordType.SOA, 1, rr.ttl, len(data)) + data)


class Address:
    """An A or AAAA record whose type, class, TTL and data are already in wire form. dnslib's
    encoder writes it as it writes an RR (``pack``); ``cache.encode`` joins the records of an
    answer owned by the question name without the encoder. A headless service answers with one
    per ready endpoint: made and encoded this way one costs about 1 us, against 9.5 us to make
    an RR with A data and 11 us for dnslib to encode it (2026-11-23)."""

    __slots__ = ("rname", "rtype", "wire")

    def __init__(self, owner: DNSLabel, ip: str, ttl: int) -> None:
        six = ":" in ip
        data = socket.inet_pton(socket.AF_INET6 if six else socket.AF_INET, ip)
        self.rname = owner
        self.rtype = _AAAA if six else _A
        self.wire = struct.pack(">HHIH", self.rtype, wire.CLASS_IN, ttl, len(data)) + data

    def pack(self, buffer: DNSBuffer) -> None:
        buffer.encode_name(self.rname)
        buffer.append(self.wire)


Record = RR | Address


@dataclass(frozen=True, slots=True)
class Answer:
    """Records for a question; with no records, ``soa`` makes it a negative answer (one that
    follows CNAMEs has its SOA in ``authority`` instead)."""

    rcode: int
    answer: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    soa: Soa | None = None
    authority: tuple[RR, ...] = ()
    tags: frozenset[Tag] = frozenset()


class Quick(NamedTuple):
    """An answer of addresses only (``Zone.quick``): NXDOMAIN or NODATA when ``soa`` is set."""

    rcode: Rcode
    addresses: tuple[str, ...]
    soa: Soa | None
    tag: Tag  # the one tag whose change alters it


@dataclass(slots=True)
class _Node:
    """A name that exists: its records by type (none for an empty non-terminal)."""

    records: dict[int, list[Record]] = field(default_factory=dict)
    additional: list[Record] = field(default_factory=list)
    tags: set[Tag] = field(default_factory=set)


def service_tag(key: ServiceKey) -> Tag:
    return ("svc", *key)  # a plain tuple of strings, which the cycle collector stops walking


def namespace_tag(namespace: str) -> Tag:
    return ("ns", namespace)


def ip_tag(ip: str) -> Tag:
    return ("ip", ip)


def change_tags(change: Change) -> set[Tag]:
    """The tags of every answer that ``change`` may alter."""
    tags = {service_tag(change.key), namespace_tag(change.key.namespace)}
    tags.update(ip_tag(ip) for ip in change.ips)
    return tags


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Zone:
    """The records of the cluster zone and of the reverse names sdns is authoritative for: the
    addresses it holds, and every address of the service CIDRs (``service_networks``)."""

    def __init__(self, origin: str, ttl: int, view: View, nameserver: str | None = None,
                 service_networks: tuple[Network, ...] = ()) -> None:
        self.origin = tuple(label.encode() for label in origin.lower().split("."))
        self.ttl = ttl
        self.view = view
        self.nameserver = nameserver
        self.service_networks = service_networks
        self._origin_name = DNSLabel(list(self.origin))
        self._ns_name = DNSLabel([b"ns", b"dns", *self.origin])
        self._soas = {
            zone: RR(DNSLabel(list(zone)), RecordType.SOA, ttl=ttl, rdata=SOA(
                self._ns_name, DNSLabel([b"hostmaster", *self.origin]),
                (1, 7200, 1800, 86400, ttl)))
            for zone in (self.origin, _REVERSE_V4, _REVERSE_V6)
        }
        self._negative_soas = {zone: Soa.of(rr) for zone, rr in self._soas.items()}
        self._services_suffix = wire.name((b"svc", *self.origin))

    def answer(self, labels: tuple[bytes, ...], qtype: int) -> Answer | None:
        """The answer for a lowercased name, or None when the name is not ours. A CNAME to a
        name of the cluster zone (an ExternalName service pointing inside) is followed, as an
        authoritative server does (RFC 1034 4.3.2 step 3a), for at most ``MAX_CNAMES``; a loop
        ends with the CNAMEs found so far."""
        found = self._node(labels)
        if found is None:
            return None
        chain: list[Record] = []
        tags: set[Tag] = set()
        seen = {labels}
        while True:
            zone, node = found
            if isinstance(node, frozenset):  # the name does not exist; these are its tags
                return self._negative(Rcode.NXDOMAIN, zone, chain, tags | node)
            tags |= node.tags
            records = node.records
            if qtype == RecordType.ANY and records:
                qtype = next(iter(records))  # RFC 8482: one RRset is enough
            if qtype in records:
                extra = tuple(node.additional) if qtype == RecordType.SRV else ()
                return Answer(Rcode.NOERROR, (*chain, *records[qtype]), additional=extra,
                              tags=frozenset(tags))
            if RecordType.CNAME not in records:
                return self._negative(Rcode.NOERROR, zone, chain, tags)
            cname = records[RecordType.CNAME]
            chain += cname
            target = tuple(label.lower() for label in cname[0].rdata.label.label)
            inside = target[len(target) - len(self.origin):] == self.origin
            if not inside or target in seen or len(chain) >= MAX_CNAMES:
                return Answer(Rcode.NOERROR, tuple(chain), tags=frozenset(tags))
            seen.add(target)
            found = self._node(target)
            assert found is not None  # a name of the cluster zone

    def service_name(self, key: ServiceKey) -> bytes:
        """The wire form of the name of service ``key``."""
        return wire.name((key.name.encode(), key.namespace.encode(), b"svc", *self.origin))

    @property
    def origin_soa(self) -> Soa:
        """The SOA of negative answers under the cluster zone."""
        return self._negative_soas[self.origin]

    def denies(self, data: bytes) -> int | None:
        """How query ``data``, whose question is its last bytes, is denied, read from the bytes
        with no parse, as ``quick`` answers it: NXDOMAIN for a name under a service that does
        not exist; NOERROR (no data) for the address of a ClusterIP service that has none of
        the family asked, which glibc asks of every name beside the one it has (AAAA beside
        A). None for any other question, and when that is not sure.

        Every name of a flood of random names is asked once, so this is most of its cost:
        1.0 us, where the parser, ``quick`` and the packet cache took 7 us (2026-11-22)."""
        size = len(data)
        end = size - 4 - len(self._services_suffix)  # where the labels before svc end
        if (size > wire.HEADER + 255 + 4 or not data.endswith(_CLASS_IN)
                or not data.startswith(self._services_suffix, end)):
            return None
        qtype = data[size - 4] << 8 | data[size - 3]
        if qtype in _ZONE_TRANSFERS:
            return None
        pos, name_at, namespace_at = wire.HEADER, 0, 0
        while pos < end:
            length = data[pos]
            if not 0 < length < 64:
                return None
            name_at, namespace_at = namespace_at, pos
            pos += length + 1
        if pos != end or not name_at:
            return None
        # both labels decoded at once, then split at the namespace's length byte
        labels = data[name_at + 1:end].lower().decode("latin-1")
        split = namespace_at - name_at - 1
        service = self.view.service_named(labels[split + 1:], labels[:split])
        if service is None:
            return _NXDOMAIN
        six = qtype == _AAAA
        if name_at != wire.HEADER or service.type is not _CLUSTER_IP or not (six or qtype == _A):
            return None  # a name below the service's, a service that is not one address
        for ip in service.cluster_ips:  # a loop: a generator would cost 0.5 us more
            if (":" in ip) is six:
                return None  # an address of the family asked
        return _NOERROR

    def quick(self, qname: bytes, qtype: int) -> Quick | None:
        """The answer to the commonest first questions, as ``answer`` gives it but with no
        records to build: a name under a service that does not exist (NXDOMAIN), and the
        address of a ClusterIP service (A or AAAA). None for every other question.

        ``qname`` is the lowercased wire name. This runs on the UDP thread for every first
        question, so it reads only the labels below ``svc`` and compares plain ints: it took
        6.5 us a question through every label and the enums, 3.6 us this way (2026-11-22)."""
        suffix = self._services_suffix
        if not qname.endswith(suffix) or qtype in _ZONE_TRANSFERS:
            return None
        relative = wire.labels_before(qname, len(qname) - len(suffix))
        if relative is None or len(relative) < 2:
            return None
        key = ServiceKey(relative[-1].decode("latin-1"), relative[-2].decode("latin-1"))
        service = self.view.service(key)
        if service is None:
            return Quick(Rcode.NXDOMAIN, (), self._negative_soas[self.origin], service_tag(key))
        if len(relative) != 2 or service.type is not ServiceType.CLUSTER_IP:
            return None
        if qtype == _A:
            ips = [ip for ip in service.cluster_ips if ":" not in ip]
        elif qtype == _AAAA:
            ips = [ip for ip in service.cluster_ips if ":" in ip]
        else:
            return None
        # the tag made of the service's own strings, not the ones just decoded: the validity
        # kept under it costs 110 bytes less
        return Quick(Rcode.NOERROR, tuple(ips),
                     None if ips else self._negative_soas[self.origin], service_tag(service.key))

    def _node(self, labels: tuple[bytes, ...]
              ) -> tuple[tuple[bytes, ...], _Node | frozenset[Tag]] | None:
        """The zone a name is in and its node (the tags of its absence when it does not
        exist), or None when the name is not ours."""
        origin = self.origin
        if labels[len(labels) - len(origin):] == origin:
            return origin, self._cluster_node(labels, labels[:len(labels) - len(origin)])
        if labels[-2:] in (_REVERSE_V4, _REVERSE_V6):
            node = self._reverse_node(labels)
            return None if node is None else (labels[-2:], node)
        return None

    def _negative(self, rcode: Rcode, zone: tuple[bytes, ...], chain: list[Record],
                  tags: set[Tag]) -> Answer:
        """NXDOMAIN or NODATA with the zone's SOA (RFC 2308), after the CNAMEs that led there."""
        if not chain:
            return Answer(rcode, soa=self._negative_soas[zone], tags=frozenset(tags))
        return Answer(rcode, tuple(chain), authority=(self._soas[zone],), tags=frozenset(tags))

    # The cluster zone

    def _cluster_node(self, labels: tuple[bytes, ...], relative: tuple[bytes, ...]
                      ) -> _Node | frozenset[Tag]:
        owner = DNSLabel(list(labels))
        match relative:
            case ():
                return _Node({
                    RecordType.SOA: [self._soas[self.origin]],
                    RecordType.NS: [RR(owner, RecordType.NS, ttl=self.ttl,
                                       rdata=NS(self._ns_name))],
                })
            case (b"dns-version",):
                return _Node({RecordType.TXT: [RR(owner, RecordType.TXT, ttl=self.ttl,
                                             rdata=TXT(SCHEMA_VERSION))]})
            case (b"dns",) | (b"svc",) | (b"pod",) | (_, b"pod"):
                return _Node()
            case (b"ns", b"dns"):
                return self._address_node(owner, [self.nameserver] if self.nameserver else [])
            case (pod, _, b"pod"):
                return self._pod_node(owner, pod)
            case (*_, namespace, b"svc"):
                return self._service_tree(owner, relative[:-1], namespace.decode("latin-1"))
        return frozenset()

    def _service_tree(self, owner: DNSLabel, relative: tuple[bytes, ...], namespace: str
                      ) -> _Node | frozenset[Tag]:
        if len(relative) == 1:
            tag = namespace_tag(namespace)
            return _Node(tags={tag}) if self.view.has_namespace(namespace) else frozenset({tag})
        key = ServiceKey(namespace, relative[-2].decode("latin-1"))
        missing = frozenset({service_tag(key)})
        service = self.view.service(key)
        if service is None:
            return missing
        ready = self.view.ready_endpoints(key)
        if service.type is ServiceType.HEADLESS and not ready:
            return missing
        below = relative[:-2]
        node: _Node | None = None
        if not below:
            node = self._service_node(owner, service, ready)
        elif len(below) == 1 and below[0] in _PROTOCOL_LABELS:
            protocol = _PROTOCOL_LABELS[below[0]]
            if service.type is not ServiceType.EXTERNAL_NAME and any(
                    p.protocol is protocol for p in service.ports):
                node = _Node()
        elif len(below) == 1 and service.type is ServiceType.HEADLESS:
            hostname = below[0].decode("latin-1")
            ips = [e.ip for e in ready if e.hostname == hostname]
            if ips:
                node = self._address_node(owner, ips)
        elif len(below) == 2 and below[1] in _PROTOCOL_LABELS:
            node = self._srv_node(owner, service, ready, below[0], _PROTOCOL_LABELS[below[1]])
        if node is None:
            return missing
        node.tags.update(missing)
        return node

    def _service_node(self, owner: DNSLabel, service: Service, ready: list[Endpoint]) -> _Node:
        if service.type is ServiceType.EXTERNAL_NAME:
            target = DNSLabel(service.external_name)
            return _Node({RecordType.CNAME: [RR(owner, RecordType.CNAME, ttl=self.ttl,
                                           rdata=CNAME(target))]})
        if service.type is ServiceType.CLUSTER_IP:
            return self._address_node(owner, list(service.cluster_ips))
        return self._address_node(owner, [e.ip for e in ready])

    def _srv_node(self, owner: DNSLabel, service: Service, ready: list[Endpoint],
                  port_label: bytes, protocol: Protocol) -> _Node | None:
        if service.type is ServiceType.EXTERNAL_NAME or not port_label.startswith(b"_"):
            return None
        name = port_label[1:].decode("latin-1")
        port = next((p for p in service.ports if p.name == name and p.protocol is protocol), None)
        if port is None:
            return None
        service_name = [service.name.encode(), service.namespace.encode(), b"svc", *self.origin]
        if service.type is ServiceType.CLUSTER_IP:  # one record, to the service's own name
            target = DNSLabel(service_name)
            ips = list(service.cluster_ips)
            return _Node({RecordType.SRV: [self._srv(owner, port.port, target)]},
                         self._address_records(target, ips))
        # headless: a record per hostname and port of the ready endpoints, to the hostname
        by_hostname: dict[str, list[Endpoint]] = {}
        for endpoint in ready:
            by_hostname.setdefault(endpoint.hostname, []).append(endpoint)
        records, additional = [], []
        for hostname, endpoints in by_hostname.items():
            target = DNSLabel([hostname.encode(), *service_name])
            for number in dict.fromkeys(e.port(port) for e in endpoints):
                records.append(self._srv(owner, number, target))
            additional.extend(self._address_records(target, [e.ip for e in endpoints]))
        return _Node({RecordType.SRV: records}, additional)

    def _srv(self, owner: DNSLabel, port: int, target: DNSLabel) -> RR:
        return RR(owner, RecordType.SRV, ttl=self.ttl, rdata=SRV(0, 100, port, target))

    def _pod_node(self, owner: DNSLabel, pod: bytes) -> _Node | frozenset[Tag]:
        text = pod.decode("latin-1")
        try:
            ip = ipaddress.IPv4Address(text.replace("-", "."))
        except ValueError:
            try:
                ip = ipaddress.IPv6Address(text.replace("-", ":"))
            except ValueError:
                return frozenset()
        return self._address_node(owner, [str(ip)])

    def _address_node(self, owner: DNSLabel, ips: list[str]) -> _Node:
        node = _Node()
        for record in self._address_records(owner, ips):
            node.records.setdefault(record.rtype, []).append(record)
        return node

    def _address_records(self, owner: DNSLabel, ips: list[str]) -> list[Record]:
        return [Address(owner, ip, self.ttl) for ip in ips]

    # Reverse zones: the addresses we hold, and the service CIDRs, where an address nobody
    # holds does not exist; other names are not ours.

    def _reverse_node(self, labels: tuple[bytes, ...]) -> _Node | frozenset[Tag] | None:
        ip = _reverse_ip(labels)
        if ip is None:
            return None
        targets: list[DNSLabel] = []
        holders = self.view.holders(ip)
        for key, endpoint_id in sorted(holders, key=lambda h: (h[0], h[1] or "")):
            service = self.view.service(key)
            if service is None:
                continue
            name = [key.name.encode(), key.namespace.encode(), b"svc", *self.origin]
            if endpoint_id is None and service.type is ServiceType.CLUSTER_IP:
                targets.append(DNSLabel(name))
            elif endpoint_id is not None and service.type is ServiceType.HEADLESS:
                endpoint = self.view.endpoint(key, endpoint_id)
                if endpoint is not None and endpoint.serving:
                    targets.append(DNSLabel([endpoint.hostname.encode(), *name]))
        if not targets:
            address = ipaddress.ip_address(ip)
            if any(address in network for network in self.service_networks):
                return frozenset({ip_tag(ip)})
            return None
        owner = DNSLabel(list(labels))
        tags = {ip_tag(ip)} | {service_tag(key) for key, _ in holders}
        return _Node({RecordType.PTR: [RR(owner, RecordType.PTR, ttl=self.ttl, rdata=PTR(t))
                                  for t in targets]}, tags=tags)


def _reverse_ip(labels: tuple[bytes, ...]) -> str | None:
    """The address a reverse name stands for, or None for any other name."""
    digits = labels[:-2]
    try:
        if labels[-2:] == _REVERSE_V4 and len(digits) == 4:
            return str(ipaddress.IPv4Address(b".".join(reversed(digits)).decode()))
        if labels[-2:] == _REVERSE_V6 and len(digits) == 32 and all(len(d) == 1 for d in digits):
            return str(ipaddress.IPv6Address(int(b"".join(reversed(digits)), 16)))
    except ValueError:
        return None
    return None
