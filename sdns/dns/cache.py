"""Pre-encoded answers, keyed by (lowercased wire name, type), dropped by tag when data changes.

An entry is the encoded reply without its ID, flags and question, so serving it is a few slices:
the client's question is spliced back in, which also gives back the client's letter case to every
owner name compressed against it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from dnslib import DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from sdns.dns import wire
from sdns.dns.zone import Answer, Tag

Key = tuple[bytes, int]


class Encoded:
    """One answer in wire form, ready to be stamped with a query's ID and question."""

    __slots__ = ("counts", "counts_edns", "flags", "rest", "tags", "truncated_flags")

    def __init__(self, packed: bytes, question_end: int, tags: frozenset[Tag]) -> None:
        self.flags = packed[2:4]
        self.truncated_flags = bytes((packed[2] | 0x02, packed[3]))
        self.counts = packed[4:12]
        qd, an, ns, ar = struct.unpack(">HHHH", self.counts)
        self.counts_edns = struct.pack(">HHHH", qd, an, ns, ar + 1)
        self.rest = packed[question_end:]
        self.tags = tags

    def reply(self, query: bytes, parsed: wire.Query, udp: bool) -> bytes:
        flags = self.flags
        if query[2] & 1:  # echo RD
            flags = bytes((flags[0] | 1, flags[1]))
        question = query[wire.HEADER:parsed.end]
        opt = parsed.opt
        if opt is None:
            reply = query[:2] + flags + self.counts + question + self.rest
        else:
            reply = query[:2] + flags + self.counts_edns + question + self.rest + opt
        if udp and len(reply) > parsed.udp_limit:
            return self._truncated(query, question, opt)
        return reply

    def _truncated(self, query: bytes, question: bytes, opt: bytes | None) -> bytes:
        flags = bytes((self.truncated_flags[0] | query[2] & 1, self.truncated_flags[1]))
        counts = struct.pack(">HHHH", 1, 0, 0, 0 if opt is None else 1)
        return query[:2] + flags + counts + question + (opt or b"")


def encode(qname: bytes, qtype: int, answer: Answer) -> Encoded:
    """Encode ``answer`` for the lowercased question (``qname`` in wire form)."""
    labels = wire.labels(qname)
    record = DNSRecord(
        DNSHeader(id=0, qr=1, aa=1, rd=0, ra=0, rcode=answer.rcode),
        q=DNSQuestion(DNSLabel(list(labels)), qtype),
        rr=list(answer.answer), auth=list(answer.authority), ar=list(answer.additional),
    )
    return Encoded(record.pack(), wire.HEADER + len(qname) + 4, answer.tags)


class AnswerCache:
    """A bounded map of encoded answers; the oldest entry goes first when it is full."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: dict[Key, Encoded] = {}
        self._by_tag: dict[Tag, set[Key]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Encoded | None:
        return self._entries.get(key)

    def put(self, key: Key, entry: Encoded) -> None:
        if key in self._entries:
            self._remove(key)
        elif len(self._entries) >= self.capacity:
            self._remove(next(iter(self._entries)))
        self._entries[key] = entry
        for tag in entry.tags:
            self._by_tag.setdefault(tag, set()).add(key)

    def invalidate(self, tags: Iterable[Tag]) -> None:
        for tag in tags:
            for key in self._by_tag.pop(tag, ()):
                self._remove(key)

    def clear(self) -> None:
        self._entries.clear()
        self._by_tag.clear()

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for tag in entry.tags:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]

