"""A query in, a reply out: the path every DNS message takes, whatever its transport.

Two threads use a Responder, by one rule. The event loop changes the view and drops the
answers a change touches (``changed``, ``reloaded``, called by the watcher holding the view's
lock); the UDP thread (``cached_reply``) reads the answer cache, takes from it the validity of
each first answer it makes itself (``Zone.quick``), and is the only writer of the packet cache.
Every write to the answer cache, from either thread, holds the view's lock, so an answer derived
from an older view is never stored (nor given a validity) after the change that outdates it;
reads take no lock, each being one call into C that the GIL makes atomic. The prepared replies
(``prepared``) follow the same rule: the watcher makes and drops them holding the lock, and the
UDP thread reads them with one dict lookup. A denial read from the query's bytes
(``Zone.denies``) asks the view for one service and keeps only the question's hash
(``_denied_once``, the UDP thread's alone). An answer dropped sets its validity to 0 with one
store, which the thread checks before serving a packet. The one value both threads write
without the lock is an entry's rotation counter (``Encoded.turn``): a lost update repeats an
order of the addresses once, and never makes a wrong reply.
"""

from __future__ import annotations

import ipaddress
import logging
import struct

from sdns.dns import tally, wire
from sdns.dns.cache import (
    ALLOCATOR_SLACK,
    AnswerCache,
    Denials,
    PacketCache,
    encode,
    quick_reply,
)
from sdns.dns.forward import Forwarder
from sdns.dns.wire import Rcode, RecordType
from sdns.dns.zone import Quick, Zone, change_tags, service_tag
from sdns.model import ServiceKey
from sdns.view import Change

log = logging.getLogger(__name__)

# The header of a question as stub resolvers and dnsperf send it: recursion desired and no
# other flag, one question, no EDNS. Such a question for a ClusterIP service's address has its
# reply made when the watcher applies the change (``prepared``), not when it is first asked;
# for a name under a service that does not exist, or for an address family that a ClusterIP
# service lacks, its reply is made without the parser.
_STUB_HEADER = struct.pack(">HHHHH", 0x0100, 1, 0, 0, 0)
# The same with EDNS, as Go's resolver and dnspython ask: one additional record, an OPT of
# version 0 with no options (its last 11 bytes: root owner and type, any payload size, extended
# rcode and version 0, any flags, no data). Answered as the question without it, plus our OPT.
_EDNS_STUB_HEADER = struct.pack(">HHHHH", 0x0100, 1, 0, 0, 1)
_OPT_OWNER_TYPE = wire.OPT[:3]  # an OPT record's root owner and type, as in ours
_OPT_SIZE = 11
_A, _AAAA = int(RecordType.A), int(RecordType.AAAA)
_A_IN = struct.pack(">HH", _A, wire.CLASS_IN)
_AAAA_IN = struct.pack(">HH", _AAAA, wire.CLASS_IN)
_SHAPES = 4096  # the most tally cells of replies made from bytes kept: odd types make no more
# Questions denied from their bytes, remembered (by hash) so that a second ask is cached: at
# most this many, all forgotten at once when it is reached (a flood of names asked once then
# costs a set insert each, 85 ns)
_DENIED_ONCE = 8192



class Responder:
    """Answers the zone itself and hands other names to the forwarder (``forward``)."""

    def __init__(self, zone: Zone, cache_bytes: int,
                 forwarder: Forwarder | None = None, allow: tuple[str, ...] = ()) -> None:
        self.zone = zone
        # half for the packet cache, which holds a reply for each answer a client asked for
        # again; a quarter each for the answers and for the validities of first answers
        held = int(cache_bytes / ALLOCATOR_SLACK)
        self.cache = AnswerCache(held // 4, held // 4)
        self.packets = PacketCache(held - 2 * (held // 4))
        self.forwarder = forwarder
        self._allow = [ipaddress.ip_network(network) for network in allow]
        self._allowed: dict[str, bool] = {}
        self.tallies = tally.Tallies()
        # replies (without the ID) ready before anyone asks: the query (without the ID) of a
        # ClusterIP service's A, and AAAA when it has an IPv6 address, in lowercase and with
        # the header above. Part of the loaded data, like the view, so outside --cache-mb: a
        # first pass over 100,000 services runs at the packet cache's rate
        self.prepared: dict[bytes, bytes] = {}
        # the tally cell of a prepared reply by its length and type (a few dozen of them):
        # ``tally.key`` would take 0.8 us of the 1.7 us such a reply costs
        self._prepared_counts: dict[int, int] = {}
        self._denials = Denials(zone.origin_soa)
        # the same for the other replies made from a query's bytes (denials, and prepared
        # replies with an OPT record), by length, rcode and type, filled as they are made
        self._cells: dict[int, int] = {}
        self._count = self.tallies.udp_thread.count
        self._denied_once: set[int] = set()

    def cached_reply(self, data: bytes) -> bytes | None:
        """The UDP reply to ``data`` when its answer is cached, or quick to make (then it is
        cached; a denial read from the query's bytes only when its question comes again);
        None means "ask ``reply``". The hot path, run on the UDP thread."""
        question = data[2:]  # both lookups share its hash
        ready = self.prepared.get(question)
        if ready is not None:
            # the question ends with its type (A or AAAA: the low byte says which) and class
            self._count(self._prepared_counts[len(ready) << 8 | data[-3]])
            return data[:2] + ready
        hit = self.packets.get(question)
        if hit is not None and hit[0][0]:
            self._count(hit[2])
            return data[:2] + hit[1]
        head = question[:10]
        if head == _STUB_HEADER:
            plain, opt = data, None
        elif head == _EDNS_STUB_HEADER and data[-_OPT_SIZE:-8] == _OPT_OWNER_TYPE \
                and not (data[-6] or data[-5] or data[-2] or data[-1]):
            # the question without its OPT record (the header still counts it, but the
            # replies below do not read it); their reply, with our OPT record added
            plain, opt = data[:-_OPT_SIZE], wire.OPT_DO if data[-4] & 0x80 else wire.OPT
            ready = self.prepared.get(_STUB_HEADER + plain[wire.HEADER:])
            if ready is not None:
                reply = _with_opt(data[:2] + ready, opt)
                self._count(self._cell(reply, plain[-4] << 8 | plain[-3]))
                return reply
        else:
            plain = None
        denied = None if plain is None else self.zone.denies(plain)
        if denied is not None:
            asked, once = hash(question), self._denied_once
            if asked not in once:
                # most likely a name asked once: denied from its bytes and kept nowhere, as a
                # flood of them would only push the names asked again out of the packet cache
                if len(once) >= _DENIED_ONCE:
                    once.clear()
                once.add(asked)
                reply = self._denials.reply(plain, denied)
                if opt is not None:
                    reply = _with_opt(reply, opt)
                self._count(self._cell(reply, plain[-4] << 8 | plain[-3]))
                return reply
            # asked again (a search-path name, say): made below and kept in the packet cache,
            # where the next asks find it for less than half of what a denial costs
        try:
            query = wire.parse(data)
        except (wire.Drop, wire.FormatError):
            return None
        if data[2] & 0x78 or query.edns_version or query.qclass != wire.CLASS_IN:
            return None
        entry = self.cache.get((query.qname, query.qtype))
        if entry is None:
            return self._first_reply(data, query)
        reply = entry.reply(data, query, True)
        counted = tally.key(query.qtype, reply, tally.CACHED)
        if not entry.rotates:
            self.packets.put(question, entry.validity, reply[2:], counted)
        self._count(counted)
        return reply

    def _cell(self, reply: bytes, qtype: int) -> int:
        """The tally cell of ``reply``, made from the bytes of a question of ``qtype``: kept
        for the few hundred lengths, rcodes and types such replies take (``tally.key`` costs
        more than a denial)."""
        shape = (len(reply) << 4 | reply[3] & 0x0F) << 16 | qtype
        counted = self._cells.get(shape)
        if counted is None:
            counted = tally.key(qtype, reply, tally.CACHED)
            if len(self._cells) < _SHAPES:
                self._cells[shape] = counted
        return counted

    def _first_reply(self, data: bytes, query: wire.Query) -> bytes | None:
        """The reply to a first question that ``Zone.quick`` answers, made from the view and
        kept in the packet cache only (under the validity of its tag); None for the others,
        which the loop answers."""
        with self.zone.view.lock:
            quick = self.zone.quick(query.qname, query.qtype)
            if quick is None:
                return None
            validity = self.cache.validity(quick.tag)
        reply = quick_reply(data, query, quick, self.zone.ttl)
        counted = tally.key(query.qtype, reply, tally.CACHED)  # the packet's later hits
        self.packets.put(data[2:], validity, reply[2:], counted)
        self.tallies.udp_thread.count(tally.with_outcome(counted, tally.MISS))
        return reply

    async def forward(self, data: bytes, query: wire.Query, udp: bool, client: str) -> bytes:
        """The reply to a query ``reply`` did not answer: forwarded for allowed clients, so that
        sdns is never an open resolver; REFUSED for the others."""
        outcome = tally.UNCACHED
        if self.forwarder is None or not self._is_allowed(client):
            reply = wire.error_reply(data, Rcode.REFUSED, query)
        else:
            try:
                reply, cached = await self.forwarder.reply(data, query, udp)
                outcome = tally.CACHED if cached else tally.MISS
            except Exception:
                log.exception("failed to forward a query; replying SERVFAIL")
                reply = wire.error_reply(data, Rcode.SERVFAIL, query)
        self.tallies.on_loop(udp).count(tally.key(query.qtype, reply, outcome))
        return reply

    def _is_allowed(self, client: str) -> bool:
        allowed = self._allowed.get(client)
        if allowed is None:
            address = ipaddress.ip_address(client.partition("%")[0])
            allowed = any(address in network for network in self._allow)
            if len(self._allowed) < 10_000:
                self._allowed[client] = allowed
        return allowed

    def reply(self, data: bytes, udp: bool) -> bytes | wire.Query | None:
        """The reply to ``data``; None when it deserves none; the parsed query when the name is
        not in the zone and ``forward`` should take it. Never raises."""
        try:
            query = wire.parse(data)
        except wire.Drop:
            return None
        except wire.FormatError:
            reply = wire.error_reply(data, Rcode.FORMERR)
            self.tallies.on_loop(udp).count(tally.key(0, reply, tally.UNCACHED))
            return reply
        try:
            reply, outcome = self._answer(data, query, udp)
        except Exception:
            log.exception("failed to answer a query; replying SERVFAIL")
            reply, outcome = wire.error_reply(data, Rcode.SERVFAIL, query), tally.UNCACHED
        if isinstance(reply, bytes):
            self.tallies.on_loop(udp).count(tally.key(query.qtype, reply, outcome))
        return reply

    def _answer(self, data: bytes, query: wire.Query, udp: bool
                ) -> tuple[bytes | wire.Query, int]:
        """The reply (or the query, to forward) and what the cache did for it."""
        if data[2] & 0x78:
            return wire.error_reply(data, Rcode.NOTIMP, query), tally.UNCACHED
        if query.edns_version:
            return wire.error_reply(data, Rcode.BADVERS, query), tally.UNCACHED
        key = (query.qname, query.qtype)
        entry = self.cache.get(key)
        outcome = tally.CACHED
        if entry is None:
            if query.qclass != wire.CLASS_IN or query.qtype in (RecordType.AXFR, RecordType.IXFR):
                return wire.error_reply(data, Rcode.REFUSED, query), tally.UNCACHED
            answer = self.zone.answer(wire.labels(query.qname), query.qtype)
            if answer is None:
                return query, tally.UNCACHED
            entry = encode(query.qname, query.qtype, answer)
            with self.zone.view.lock:
                self.cache.put(key, entry)
            outcome = tally.MISS
        elif query.qclass != wire.CLASS_IN:
            return wire.error_reply(data, Rcode.REFUSED, query), tally.UNCACHED
        return entry.reply(data, query, udp), outcome

    # Subscriber of the watcher

    def changed(self, change: Change) -> None:
        self.cache.invalidate(change_tags(change))
        if change.endpoint_id is None:  # an endpoint's change leaves the address as it was
            self._prepare(change.key)

    def reloaded(self) -> None:
        self.cache.clear()
        self.prepared.clear()
        for service in self.zone.view.services():
            if service.cluster_ips:
                self._prepare(service.key, fresh=True)

    def _prepare(self, key: ServiceKey, fresh: bool = False) -> None:
        """Make, or drop, the prepared replies to the address questions of service ``key``:
        exactly what ``quick_reply`` makes of the same question when it is first asked (made
        directly, not through the parser and ``Zone.quick``, which took 16 us a service; a
        start with 100,000 services waits for these). ``fresh``: none are prepared yet."""
        service = self.zone.view.service(key)
        ips = () if service is None else service.cluster_ips
        qname = self.zone.service_name(key)
        v4 = tuple(ip for ip in ips if ":" not in ip)
        v6 = tuple(ip for ip in ips if ":" in ip)
        for suffix, qtype, addresses in ((_A_IN, _A, v4), (_AAAA_IN, _AAAA, v6)):
            question = _STUB_HEADER + qname + suffix
            if not addresses:  # no data: denied from the query's bytes (``Zone.denies``)
                if not fresh:
                    self.prepared.pop(question, None)
                continue
            data = b"\0\0" + question
            query = wire.Query(qname, qtype, wire.CLASS_IN, len(data), None, 512, 0)
            quick = Quick(Rcode.NOERROR, addresses, None, service_tag(key))
            ready = quick_reply(data, query, quick, self.zone.ttl)[2:]
            self.prepared[question] = ready
            counts = len(ready) << 8 | qtype
            if counts not in self._prepared_counts:
                self._prepared_counts[counts] = tally.key(qtype, data[:2] + ready, tally.CACHED)


def _with_opt(reply: bytes, opt: bytes) -> bytes:
    """``reply``, which has no additional record, with ``opt`` as its one."""
    return reply[:10] + b"\0\1" + reply[12:] + opt
