"""A query in, a reply out: the path every DNS message takes, whatever its transport."""

from __future__ import annotations

import logging

from sdns.dns import wire
from sdns.dns.cache import AnswerCache, encode
from sdns.dns.zone import Zone, change_tags
from sdns.watch import Change

log = logging.getLogger(__name__)

DEFAULT_CACHE_ENTRIES = 200_000


class Responder:
    def __init__(self, zone: Zone, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.zone = zone
        self.cache = AnswerCache(cache_entries)

    def reply(self, data: bytes, udp: bool) -> bytes | None:
        """The reply to ``data``, or None when it deserves none. Never raises."""
        try:
            query = wire.parse(data)
        except wire.Drop:
            return None
        except wire.FormatError:
            return wire.error_reply(data, wire.FORMERR)
        try:
            return self._answer(data, query, udp)
        except Exception:
            log.exception("failed to answer a query; replying SERVFAIL")
            return wire.error_reply(data, wire.SERVFAIL, query)

    def _answer(self, data: bytes, query: wire.Query, udp: bool) -> bytes:
        if data[2] & 0x78:
            return wire.error_reply(data, wire.NOTIMP, query)
        if query.edns_version:
            return wire.error_reply(data, wire.BADVERS, query)
        key = (query.qname, query.qtype)
        entry = self.cache.get(key)
        if entry is None:
            if query.qclass != wire.CLASS_IN or query.qtype in (wire.QTYPE_AXFR, wire.QTYPE_IXFR):
                return wire.error_reply(data, wire.REFUSED, query)
            answer = self.zone.answer(wire.labels(query.qname), query.qtype)
            if answer is None:
                return wire.error_reply(data, wire.REFUSED, query)
            entry = encode(query.qname, query.qtype, answer)
            self.cache.put(key, entry)
        elif query.qclass != wire.CLASS_IN:
            return wire.error_reply(data, wire.REFUSED, query)
        return entry.reply(data, query, udp)

    # Subscriber of the watcher

    def changed(self, change: Change) -> None:
        self.cache.invalidate(change_tags(change))

    def reloaded(self) -> None:
        self.cache.clear()
