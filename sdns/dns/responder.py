"""A query in, a reply out: the path every DNS message takes, whatever its transport.

Two threads use a Responder, by one rule. The event loop changes the view and drops the
answers a change touches (``changed``, ``reloaded``, called by the watcher holding the view's
lock); the UDP thread (``cached_reply``) reads the answer cache, takes from it the validity of
each first answer it makes itself (``Zone.quick``), and is the only writer of the packet cache.
Every write to the answer cache, from either thread, holds the view's lock, so an answer derived
from an older view is never stored (nor given a validity) after the change that outdates it;
reads take no lock, each being one call into C that the GIL makes atomic. An answer dropped
sets its validity to 0 with one store, which the thread checks before serving a packet. The
one value both threads write without the lock is an entry's rotation counter (``Encoded.turn``):
a lost update repeats an order of the addresses once, and never makes a wrong reply.
"""

from __future__ import annotations

import ipaddress
import logging

from sdns.dns import tally, wire
from sdns.dns.cache import ALLOCATOR_SLACK, AnswerCache, PacketCache, encode, quick_reply
from sdns.dns.forward import Forwarder
from sdns.dns.wire import Rcode, RecordType
from sdns.dns.zone import Zone, change_tags
from sdns.view import Change

log = logging.getLogger(__name__)



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

    def cached_reply(self, data: bytes) -> bytes | None:
        """The UDP reply to ``data`` when its answer is cached, or quick to make (then it is
        cached); None means "ask ``reply``". The hot path, run on the UDP thread."""
        hit = self.packets.get(data[2:])
        if hit is not None and hit[0][0]:
            self.tallies.udp_thread.count(hit[2])
            return data[:2] + hit[1]
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
            self.packets.put(data[2:], entry.validity, reply[2:], counted)
        self.tallies.udp_thread.count(counted)
        return reply

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

    def reloaded(self) -> None:
        self.cache.clear()
