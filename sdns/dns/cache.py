"""Pre-encoded answers, keyed by (lowercased wire name, type), dropped by tag when data changes.

An entry is the encoded reply without its ID, flags and question, so serving it is a few slices:
the client's question is spliced back in, which also gives back the client's letter case to every
owner name compressed against it.
"""

from __future__ import annotations

import socket
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable

from dnslib import DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from sdns.dns import tally, wire
from sdns.dns.wire import Rcode, RecordType
from sdns.dns.zone import Address, Answer, Quick, Record, Soa, Tag

Key = tuple[bytes, int]


# Whether a reply made from the view is still true: one byte, 1 until a change touches what the
# reply was made from, then 0; the packet cache checks it before serving the reply. A bytearray
# holds no references, so the cycle collector never walks it, nor the packet cache's tuples
# that hold one. With a Python object there, each first answer left objects for the collector's
# full passes to walk: 60% of a cold pass over 100,000 names (py-spy, 2026-11-22).
Validity = bytearray


def _validity() -> Validity:
    return bytearray(b"\1")


class Encoded:
    """One answer in wire form, ready to be stamped with a query's ID and question.

    ``validity`` turns to 0 when the cache drops the entry, so that copies held elsewhere (the
    packet cache of the responder) know to stop serving it."""

    __slots__ = ("counts", "counts_edns", "denial", "flags", "records", "rest", "short", "tags",
                 "truncated_flags", "turn", "validity")

    def __init__(self, packed: bytes, question_end: int, tags: frozenset[Tag],
                 records: list[bytes] | None = None) -> None:
        self.flags = packed[2:4]
        self.truncated_flags = bytes((packed[2] | 0x02, packed[3]))
        self.counts = packed[4:12]
        qd, an, ns, ar = struct.unpack(">HHHH", self.counts)
        self.denial = wire.is_denial(packed[3] & 0x0F, an)
        self.counts_edns = struct.pack(">HHHH", qd, an, ns, ar + 1)
        self.rest = packed[question_end:]
        # the reply without its additional records, for a UDP client whose limit they pass
        self.short = None if ar == 0 else (
            self.rest[:wire.records_end(packed, question_end, an + ns) - question_end])
        self.tags = tags
        self.validity = _validity()
        self.turn = 0
        # the answer's records, when they can be served in any order (given, or found)
        self.records = records or (_rotatable(self.rest, an) if ns == ar == 0 else None)

    @property
    def rotates(self) -> bool:
        return self.records is not None

    def reply(self, query: bytes, parsed: wire.Query, udp: bool) -> bytes:
        flags = self.flags
        if query[2] & 1:  # echo RD
            flags = bytes((flags[0] | 1, flags[1]))
        question = query[wire.HEADER:parsed.end]
        rest = self.rest
        if self.records is not None:  # round robin over the addresses, like CoreDNS loadbalance
            self.turn = turn = (self.turn + 1) % len(self.records)
            rest = b"".join(self.records[turn:] + self.records[:turn])
        opt = parsed.opt
        if opt is None:
            reply = query[:2] + flags + self.counts + question + rest
        else:
            reply = query[:2] + flags + self.counts_edns + question + rest + opt
        if udp and len(reply) > parsed.udp_limit:
            if self.short is not None:  # RFC 2181 section 9: additional records are optional
                counts = wire.without_additional(self.counts, opt is not None)
                reply = query[:2] + flags + counts + question + self.short + (opt or b"")
                if len(reply) <= parsed.udp_limit:
                    return reply
            return self._truncated(query, question, opt)
        return reply

    def _truncated(self, query: bytes, question: bytes, opt: bytes | None) -> bytes:
        flags = bytes((self.truncated_flags[0] | query[2] & 1, self.truncated_flags[1]))
        counts = struct.pack(">HHHH", 1, 0, 0, 0 if opt is None else 1)
        return query[:2] + flags + counts + question + (opt or b"")


def _owned_by(records: tuple[Record, ...], qname: bytes) -> bool:
    """Whether ``records`` are all ``Address`` records of one owner, the name ``qname``."""
    owner = records[0].rname
    return (all(type(record) is Address and record.rname is owner for record in records)
            and wire.name(owner.label) == qname)


def _rotatable(answers: bytes, count: int) -> list[bytes] | None:
    """The records of an answer section of several A or AAAA records owned by the question
    name (a pointer to it): these can be reordered freely. None for anything else."""
    if count < 2:
        return None
    records, pos = [], 0
    for _ in range(count):
        if answers[pos:pos + 2] != _OWNER_IS_QUESTION:
            return None
        rtype, _, _, length = struct.unpack_from(">HHIH", answers, pos + 2)
        if rtype not in (RecordType.A, RecordType.AAAA):
            return None
        records.append(answers[pos:pos + 12 + length])
        pos += 12 + length
    return records if pos == len(answers) else None


_AUTHORITATIVE = 0x84  # QR and AA
_join = b"".join  # one allocation where ``+`` makes one per operand
_OWNER_IS_QUESTION = b"\xc0\x0c"  # a compression pointer to the name in the question


def encode(qname: bytes, qtype: int, answer: Answer) -> Encoded:
    """Encode ``answer`` for the lowercased question (``qname`` in wire form)."""
    question_end = wire.HEADER + len(qname) + 4
    soa = answer.soa
    if soa is not None:
        # header, question, and the SOA owned by the zone's name inside the question
        packed = (struct.pack(">HBBHHHH", 0, _AUTHORITATIVE, answer.rcode, 1, 0, 1, 0) + qname
                  + struct.pack(">HH", qtype, wire.CLASS_IN) + soa.owned_in(len(qname)))
        return Encoded(packed, question_end, answer.tags)
    records = answer.answer
    if records and not answer.authority and not answer.additional and _owned_by(records, qname):
        # addresses of the question's name (a headless service has one per endpoint): joined
        # as dnslib would write them, each owner a pointer to the question
        parts = [_OWNER_IS_QUESTION + record.wire for record in records]  # type: ignore[union-attr]
        packed = b"".join((struct.pack(">HBBHHHH", 0, _AUTHORITATIVE, answer.rcode, 1,
                                       len(parts), 0, 0), qname,
                           struct.pack(">HH", qtype, wire.CLASS_IN), *parts))
        return Encoded(packed, question_end, answer.tags, parts if len(parts) > 1 else None)
    record = DNSRecord(
        DNSHeader(id=0, qr=1, aa=1, rd=0, ra=0, rcode=answer.rcode),
        q=DNSQuestion(DNSLabel(list(wire.labels(qname))), qtype),
        rr=list(answer.answer), auth=list(answer.authority), ar=list(answer.additional),
    )
    return Encoded(record.pack(), question_end, answer.tags)


# What an entry costs beyond the bytes of its name and records, measured with tracemalloc
# (2026-11-22): the Encoded object and its small bytes, the key, the tag set and the index sets
# behind it, the OrderedDict's node: 1,290 to 1,440 bytes an answer; 260 to 340 bytes a packet
# (its two bytes objects, tuple, tally key and node); 310 to 420 bytes a validity with its tag
# (the more when its names are decoded from the question, for a service that does not exist).
ANSWER_OVERHEAD = 1_400
PACKET_OVERHEAD = 300
VALIDITY_OVERHEAD = 360
# What the process's memory grows by for each byte the caches hold, once a flood of distinct
# names has churned them for a while: freed blocks of many sizes leave the allocator's arenas
# part used. 1.3x to 1.5x, flooding a process with first answers (2026-11-22), so the caches
# hold ``--cache-mb`` divided by this; tests/integration/test_cache_bound.py checks the bound.
ALLOCATOR_SLACK = 1.5


def quick_reply(data: bytes, query: wire.Query, quick: Quick, ttl: int) -> bytes:
    """The reply to a first question that ``Zone.quick`` answers, made straight from the query:
    byte for byte what ``encode`` and ``Encoded.reply`` make of the same answer, without the
    entry. This runs on the UDP thread for a first question: 2.5 us here, against 7 us through
    an ``Encoded`` entry and the answer cache (100,000 services asked in random order)."""
    head = _AUTHORITATIVE | data[2] & 1, quick.rcode  # flags: RD echoed
    opt = query.opt or b""
    question = data[wire.HEADER:query.end]
    soa = quick.soa
    if soa is not None:  # the SOA owned by the zone's name inside the question
        return b"".join((data[:2], struct.pack(">BBHHHH", *head, 1, 0, 1, len(opt) > 0),
                         question, soa.owned_in(len(query.qname)), opt))
    aaaa = query.qtype == RecordType.AAAA
    owner = _OWNER_IS_QUESTION + struct.pack(">HHIH", query.qtype, wire.CLASS_IN, ttl,
                                             16 if aaaa else 4)
    family = socket.AF_INET6 if aaaa else socket.AF_INET
    records = [owner + socket.inet_pton(family, ip) for ip in quick.addresses]
    return b"".join((data[:2], struct.pack(">BBHHHH", *head, 1, len(records), 0, len(opt) > 0),
                     question, *records, opt))


class Denials:
    """Negative replies (NXDOMAIN, or NOERROR with no data) to questions asked as stub
    resolvers ask (RD, no EDNS) for names under the zone of ``soa``: byte for byte what
    ``quick_reply`` makes of the same question and answer, by joining the query's ID and
    question with two constant parts."""

    def __init__(self, soa: Soa) -> None:
        # by rcode, a plain int: hashing an IntEnum member runs Python code
        self._heads = {int(rcode): struct.pack(">BBHHHH", _AUTHORITATIVE | 1, rcode, 1, 0, 1, 0)
                       for rcode in (Rcode.NXDOMAIN, Rcode.NOERROR)}
        # by the length of the question's name: the SOA, owned by the zone's name in it
        self._tails = [soa.owned_in(length) if length >= len(soa.zone) else b""
                       for length in range(256)]

    def reply(self, data: bytes, rcode: int) -> bytes:
        """The reply of ``rcode`` to ``data``, a query with nothing after its question."""
        return _join((data[:2], self._heads[rcode], data[wire.HEADER:],
                      self._tails[len(data) - 16]))


class AnswerCache:
    """A map of encoded answers bounded in bytes (``max_bytes``, as counted by their names,
    records and ``ANSWER_OVERHEAD``); the oldest entry goes first when it is full. A bound in
    bytes, not entries, because a flood of random names must not grow the process past what
    the operator gave the cache (``--cache-mb``). The validities of replies made without an
    entry (``validity``) have a bound of their own (``max_validity_bytes``): a flood of first
    answers, each with a validity, must not push out the answers asked all the time.

    An OrderedDict, because dropping the first key of a plain dict costs a scan over the slots
    of every key dropped before it: 32 us per insert of a full cache under a flood of random
    names, against a constant cost here."""

    def __init__(self, max_bytes: int, max_validity_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_validity_bytes = max_validity_bytes
        self.bytes = 0
        self.validity_bytes = 0
        self.evictions = 0
        self.denials = 0  # entries that are NXDOMAIN or have no answer records
        self._entries: OrderedDict[Key, Encoded] = OrderedDict()
        self._by_tag: dict[Tag, set[Key]] = {}
        # the validities of replies made without an entry (``quick_reply``), oldest first
        self._validities: OrderedDict[Tag, Validity] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Encoded | None:
        return self._entries.get(key)

    def put(self, key: Key, entry: Encoded) -> None:
        if key in self._entries:
            self._remove(key)
        size = _answer_size(key, entry)
        while self._entries and self.bytes + size > self.max_bytes:
            self._forget(*self._entries.popitem(last=False))
            self.evictions += 1
        self._entries[key] = entry
        self.bytes += size
        self.denials += entry.denial
        for tag in entry.tags:
            self._by_tag.setdefault(tag, set()).add(key)

    def validity(self, tag: Tag) -> Validity:
        """The one validity of every reply made without an entry from data tagged ``tag``.
        When the bound is reached, the oldest validity goes (and the replies that hold it
        with it)."""
        validities = self._validities
        found = validities.get(tag)
        if found is None:
            while validities and (self.validity_bytes + VALIDITY_OVERHEAD
                                  > self.max_validity_bytes):
                validities.popitem(last=False)[1][0] = 0
                self.validity_bytes -= VALIDITY_OVERHEAD
                self.evictions += 1
            found = validities[tag] = _validity()
            self.validity_bytes += VALIDITY_OVERHEAD
        return found

    def invalidate(self, tags: Iterable[Tag]) -> None:
        for tag in tags:
            for key in self._by_tag.pop(tag, ()):
                self._remove(key)
            validity = self._validities.pop(tag, None)
            if validity is not None:
                validity[0] = 0
                self.validity_bytes -= VALIDITY_OVERHEAD

    def clear(self) -> None:
        for entry in self._entries.values():
            entry.validity[0] = 0
        for validity in self._validities.values():
            validity[0] = 0
        self._entries.clear()
        self._by_tag.clear()
        self._validities.clear()
        self.bytes = 0
        self.validity_bytes = 0
        self.denials = 0

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._forget(key, entry)

    def _forget(self, key: Key, entry: Encoded) -> None:
        entry.validity[0] = 0
        self.bytes -= _answer_size(key, entry)
        self.denials -= entry.denial
        for tag in entry.tags:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]


def _answer_size(key: Key, entry: Encoded) -> int:
    return ANSWER_OVERHEAD + len(key[0]) + len(entry.rest) + len(entry.short or b"")


class PacketCache:
    """Whole replies by the query bytes after the ID: resolvers repeat the same packet, and
    then a reply costs one lookup. Bounded in bytes, oldest out first; one thread writes it
    (the UDP thread: see ``sdns.dns.responder``)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self.denials = 0  # replies counted as denials (``sdns.dns.tally``)
        # a reply with its validity (the answer's entry, or a quick reply's) and its tally key
        # (``sdns.dns.tally``)
        self._replies: OrderedDict[bytes, tuple[Validity, bytes, int]] = OrderedDict()
        # the reply kept for ``query``, or None: the dict's own method, with no Python frame
        # around it, since every query the prepared replies do not answer asks it
        self.get: Callable[[bytes], tuple[Validity, bytes, int] | None] = self._replies.get

    def __len__(self) -> int:
        return len(self._replies)

    def put(self, query: bytes, validity: Validity, reply: bytes, counted: int) -> None:
        replies = self._replies
        old = replies.pop(query, None)
        if old is not None:
            self._forget(query, old)
        size = _packet_size(query, reply)
        while replies and self.bytes + size > self.max_bytes:
            self._forget(*replies.popitem(last=False))
            self.evictions += 1
        replies[query] = (validity, reply, counted)
        self.bytes += size
        self.denials += tally.outcome(counted) == tally.DENIAL

    def _forget(self, query: bytes, held: tuple[Validity, bytes, int]) -> None:
        self.bytes -= _packet_size(query, held[1])
        self.denials -= tally.outcome(held[2]) == tally.DENIAL


def _packet_size(query: bytes, reply: bytes) -> int:
    return PACKET_OVERHEAD + len(query) + len(reply)
