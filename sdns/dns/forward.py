"""Forwarding names outside the cluster zone to upstream servers, with a cache of their answers.

An upstream query goes out over UDP from a fresh socket (a random source port) with a random ID;
only a reply with that ID and the same question is taken. A truncated reply is asked again over
TCP; an upstream that is silent, fails or refuses makes way for the next; when every one has
failed, an expired answer is served for a while (RFC 8767), else SERVFAIL. A reply that does
not parse completely (``_records``) counts as a failed upstream: it is never cached nor relayed.

Answers are cached by question with their TTLs counting down (clamped to the configured range);
NXDOMAIN and NODATA by their SOA minimum (RFC 2308). Identical queries in flight share one
upstream query.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from dnslib import QTYPE, RD, RDMAP, DNSBuffer

from sdns.config import HostPort
from sdns.dns import wire
from sdns.dns.wire import Rcode, RecordType

log = logging.getLogger(__name__)

STALE_TTL = 30  # seconds, what RFC 8767 suggests for an answer served stale


class UpstreamFailed(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    upstreams: tuple[HostPort, ...]
    timeout: float = 2.0
    min_ttl: int = 0
    max_ttl: int = 3600
    stale_seconds: int = 3600
    cache_entries: int = 10_000


class _Cached:
    """An upstream reply with its ID, question and OPT taken out, and where its TTLs are."""

    __slots__ = ("body", "counts", "denial", "expires", "flags", "short", "stored", "ttl_offsets")

    def __init__(self, flags: bytes, counts: bytes, body: bytes, ttl_offsets: list[int],
                 ttl: int) -> None:
        self.flags, self.counts, self.body = flags, counts, body
        self.ttl_offsets = ttl_offsets
        _, an, ns, ar = struct.unpack(">HHHH", counts)
        self.denial = wire.is_denial(flags[1] & 0x0F, an)
        # where the additional records start, for a UDP client whose limit they pass
        self.short = None if ar == 0 else wire.records_end(body, 0, an + ns)
        self.stored = time.monotonic()
        self.expires = self.stored + ttl

    def reply(self, query: bytes, parsed: wire.Query, udp: bool, stale: bool = False) -> bytes:
        """The reply to ``query``, TTLs counted down (or set to STALE_TTL when stale)."""
        elapsed = int(time.monotonic() - self.stored)
        body = bytearray(self.body)
        for offset in self.ttl_offsets:
            (ttl,) = struct.unpack_from(">I", body, offset)
            struct.pack_into(">I", body, offset, STALE_TTL if stale else max(0, ttl - elapsed))
        qd, an, ns, ar = struct.unpack(">HHHH", self.counts)
        opt = parsed.opt or b""
        counts = struct.pack(">HHHH", qd, an, ns, ar + (1 if opt else 0))
        flags = bytes((self.flags[0] & 0xFE | query[2] & 1, self.flags[1]))
        question = query[wire.HEADER:parsed.end]
        reply = query[:2] + flags + counts + question + bytes(body) + opt
        if udp and len(reply) > parsed.udp_limit and self.short is not None:
            # RFC 2181 section 9: additional records are optional, TC is for the answer
            counts = wire.without_additional(counts, bool(opt))
            reply = query[:2] + flags + counts + question + bytes(body[:self.short]) + opt
        if udp and len(reply) > parsed.udp_limit:
            counts = struct.pack(">HHHH", 1, 0, 0, 1 if opt else 0)
            flags = bytes((flags[0] | 0x02, flags[1]))
            return query[:2] + flags + counts + query[wire.HEADER:parsed.end] + opt
        return reply


class Forwarder:
    def __init__(self, settings: ForwardSettings) -> None:
        self.settings = settings
        self._cache: OrderedDict[tuple[bytes, int, int], _Cached] = OrderedDict()
        self._inflight: dict[tuple[bytes, int, int], asyncio.Future[_Cached]] = {}
        # for metrics: queries sent to each upstream, its replies by rcode
        self.requests: Counter[str] = Counter()
        self.responses: Counter[tuple[str, int]] = Counter()
        self.served_stale = 0
        self.evictions = 0

    def entries(self) -> tuple[int, int]:
        """How many cached answers are successes, and how many denials."""
        denials = sum(c.denial for c in self._cache.values())
        return len(self._cache) - denials, denials

    async def reply(self, data: bytes, query: wire.Query, udp: bool) -> tuple[bytes, bool]:
        """The reply, and whether it came from the cache (fresh or stale)."""
        key = (query.qname, query.qtype, query.qclass)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached.expires > now:
            self._cache.move_to_end(key)
            return cached.reply(data, query, udp), True
        try:
            fresh = await self._shared_lookup(key, data, query)
        except UpstreamFailed as error:
            stale_until = (cached.expires + self.settings.stale_seconds) if cached else 0
            if cached is not None and now < stale_until:
                log.info("serving a stale answer: %s", error)
                self.served_stale += 1
                return cached.reply(data, query, udp, stale=True), True
            log.warning("forwarding failed: %s", error)
            return wire.error_reply(data, Rcode.SERVFAIL, query), False
        return fresh.reply(data, query, udp), False

    async def _shared_lookup(self, key: tuple[bytes, int, int], data: bytes, query: wire.Query
                             ) -> _Cached:
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Cached] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._lookup(data, query)
        except BaseException as error:
            # every waiter gets the outcome, whatever ended the lookup: a cancelled one fails
            # for them, and any other error is theirs too (they reply SERVFAIL)
            shared = error if isinstance(error, Exception) else UpstreamFailed("lookup cancelled")
            future.set_exception(shared)
            future.exception()  # retrieved: waiters re-raise it, nobody else has to
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _lookup(self, data: bytes, query: wire.Query) -> _Cached:
        question = data[wire.HEADER:query.end]
        failures = []
        for upstream in self.settings.upstreams:
            try:
                reply = await self._ask_udp(upstream, question)
                if reply[2] & 0x02:  # truncated: the whole answer comes over TCP
                    reply = await self._ask_tcp(upstream, question)
                rcode = reply[3] & 0x0F
                self.responses[str(upstream), rcode] += 1
                if rcode not in (Rcode.NOERROR, Rcode.NXDOMAIN):
                    raise UpstreamFailed(f"rcode {rcode}")
                return self._store(query, reply)
            except (OSError, TimeoutError, UpstreamFailed) as error:
                failures.append(f"{upstream}: {error or type(error).__name__}")
        raise UpstreamFailed("; ".join(failures) or "no upstream servers configured")

    def _query_message(self, question: bytes) -> tuple[int, bytes]:
        qid = random.getrandbits(16)
        header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1)  # RD, one question, OPT
        return qid, header + question + wire.OPT

    async def _ask_udp(self, upstream: HostPort, question: bytes) -> bytes:
        self.requests[str(upstream)] += 1
        qid, message = self._query_message(question)
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Reply(qid, question, answered), remote_addr=(upstream.host, upstream.port))
        try:
            transport.sendto(message)
            return await asyncio.wait_for(answered, self.settings.timeout)
        finally:
            transport.close()

    async def _ask_tcp(self, upstream: HostPort, question: bytes) -> bytes:
        self.requests[str(upstream)] += 1
        qid, message = self._query_message(question)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(upstream.host, upstream.port), self.settings.timeout)
        try:
            writer.write(struct.pack(">H", len(message)) + message)
            length = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2),
                                                                 self.settings.timeout))[0]
            reply = await asyncio.wait_for(reader.readexactly(length), self.settings.timeout)
        except asyncio.IncompleteReadError:
            raise UpstreamFailed("TCP connection closed early") from None
        finally:
            writer.close()
        if not _matches(reply, qid, question):
            raise UpstreamFailed("TCP reply does not match the question")
        return reply

    def _store(self, query: wire.Query, reply: bytes) -> _Cached:
        body, counts, ttl_offsets, min_ttl = _without_opt(reply, query.end)
        settings = self.settings
        ttl = max(settings.min_ttl, min(settings.max_ttl, min_ttl))
        cached = _Cached(reply[2:4], counts, body, ttl_offsets, ttl)
        key = (query.qname, query.qtype, query.qclass)
        self._cache[key] = cached
        self._cache.move_to_end(key)
        while len(self._cache) > settings.cache_entries:
            self._cache.popitem(last=False)
            self.evictions += 1
        return cached


class _Reply(asyncio.DatagramProtocol):
    """Waits for the one datagram that answers our question; anything else is dropped."""

    def __init__(self, qid: int, question: bytes, answered: asyncio.Future[bytes]) -> None:
        self.qid, self.question, self.answered = qid, question, answered

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if _matches(data, self.qid, self.question) and not self.answered.done():
            self.answered.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answered.done():
            self.answered.set_exception(UpstreamFailed(str(exc)))


def _matches(reply: bytes, qid: int, question: bytes) -> bool:
    end = wire.HEADER + len(question)
    return (len(reply) >= end and reply[2] & 0x80 and struct.unpack_from(">H", reply)[0] == qid
            and reply[4:6] == b"\0\1" and reply[wire.HEADER:end].lower() == question.lower())


class _Record(NamedTuple):
    start: int  # offset of its owner name
    rtype: int
    ttl: int
    data: int  # offset of its data
    end: int  # offset just past it


def _records(reply: bytes, question_end: int) -> list[_Record]:
    """Every record of an upstream reply after the question, checked to the last byte: as many
    as the header counts, names that end and never loop, data within its length and of the
    form its type has (dnslib reads each), nothing after the last record, OPT at most once and
    only among the additional records. Anything else is ``UpstreamFailed``: a reply that does
    not parse completely is neither cached nor relayed."""
    an, ns, ar = struct.unpack_from(">HHH", reply, 6)
    records: list[_Record] = []
    pos = question_end
    try:
        for index in range(an + ns + ar):
            start = pos
            pos = wire.name_end(reply, pos)
            if pos + 10 > len(reply):
                raise wire.FormatError(f"record {index} cut short")
            rtype, _, ttl, length = struct.unpack_from(">HHIH", reply, pos)
            data, pos = pos + 10, pos + 10 + length
            if pos > len(reply):
                raise wire.FormatError(f"record {index} has data past the end of the message")
            if rtype == RecordType.OPT and (index < an + ns or any(
                    r.rtype == RecordType.OPT for r in records)):
                raise wire.FormatError("OPT outside the additional section, or twice")
            if rtype != RecordType.OPT:
                _check_data(reply, rtype, data, length)
            records.append(_Record(start, rtype, ttl, data, pos))
    except wire.FormatError as error:
        raise UpstreamFailed(f"malformed reply: {error}") from None
    if pos != len(reply):
        raise UpstreamFailed(f"malformed reply: {len(reply) - pos} bytes after the last record")
    return records


def _check_data(reply: bytes, rtype: int, data: int, length: int) -> None:
    buffer = DNSBuffer(reply)
    buffer.offset = data
    try:
        RDMAP.get(QTYPE.get(rtype, None), RD).parse(buffer, length)
    except Exception as error:  # whatever dnslib finds wrong in untrusted bytes
        raise wire.FormatError(f"type {rtype} data does not parse: {error}") from None
    if buffer.offset != data + length:
        raise wire.FormatError(f"type {rtype} data does not fill its length")


def _without_opt(reply: bytes, question_end: int) -> tuple[bytes, bytes, list[int], int]:
    """The records of ``reply`` without its OPT record: (records, counts, TTL offsets relative
    to the records, the TTL to cache them for). Negative answers live as long as the SOA
    minimum (RFC 2308); a negative answer without SOA is not worth caching (TTL 0)."""
    qd, an, ns, ar = struct.unpack_from(">HHHH", reply, 4)
    body = bytearray()
    offsets, ttls = [], []
    soa_ttl = None
    for index, record in enumerate(_records(reply, question_end)):
        if record.rtype == RecordType.OPT:
            ar -= 1
            continue
        offset = len(body) + record.data - 6 - record.start
        chunk = reply[record.start:record.end]
        if record.rtype == RecordType.SOA and an <= index < an + ns:  # SOA in authority
            minimum = struct.unpack_from(">I", reply, record.end - 4)[0]
            soa_ttl = min(record.ttl, minimum)  # the SOA lives as long as the answer itself
            chunk = chunk[:offset - len(body)] + struct.pack(">I", soa_ttl) + \
                chunk[offset - len(body) + 4:]
        offsets.append(offset)
        ttls.append(record.ttl)
        body += chunk
    ttl = min(ttls[:an]) if an else soa_ttl or 0
    return bytes(body), struct.pack(">HHHH", qd, an, ns, ar), offsets, ttl
