"""DNS wire format on the hot path: read the question and EDNS of a query, patch replies.

Nothing here builds a dnslib object; a cached answer is bytes plus a few integers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum
from typing import NamedTuple


class RecordType(IntEnum):
    """The record types sdns reads or writes (RFC 1035, 3596, 2782, 6891, 1995)."""

    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    IXFR = 251
    AXFR = 252
    ANY = 255


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16  # extended (EDNS), RFC 6891


def is_denial(rcode: int, answers: int) -> bool:
    """Whether a reply denies the question (RFC 2308): NXDOMAIN, or no answer records."""
    return rcode == Rcode.NXDOMAIN or answers == 0


def rcode_name(rcode: int) -> str:
    """NOERROR, NXDOMAIN, ... as logs and metrics spell them; the number when it has no name."""
    try:
        return Rcode(rcode).name
    except ValueError:
        return str(rcode)


HEADER = 12
CLASS_IN = 1
# Our EDNS UDP payload size (DNS flag day 2020).
EDNS_PAYLOAD = 1232
PLAIN_UDP_LIMIT = 512

_DO = 0x8000
_OPT_HEAD = struct.pack(">BHH", 0, RecordType.OPT, EDNS_PAYLOAD)
OPT = _OPT_HEAD + struct.pack(">IH", 0, 0)
OPT_DO = _OPT_HEAD + struct.pack(">IH", _DO, 0)
OPT_BADVERS = _OPT_HEAD + struct.pack(">IH", 1 << 24, 0)


class Drop(Exception):
    """Not worth an answer: too short to hold a header, or itself a response."""


class FormatError(Exception):
    """The header is readable but the rest is not."""


class Query(NamedTuple):
    qname: bytes  # wire form, lowercased
    qtype: int
    qclass: int
    end: int  # offset just past the question
    opt: bytes | None  # the OPT record to answer with; None without EDNS
    udp_limit: int
    edns_version: int


def parse(data: bytes) -> Query:
    """The question and EDNS options of a query."""
    if len(data) < HEADER or data[2] & 0x80:
        raise Drop
    if data[4] or data[5] != 1:
        raise FormatError("a query carries exactly one question")
    pos = HEADER
    size = len(data)
    while True:
        if pos >= size:
            raise FormatError("question name runs past the message")
        length = data[pos]
        if length == 0:
            break
        if length > 63:
            raise FormatError("compressed or extended label in the question")
        pos += length + 1
    name_end = pos + 1
    if name_end - HEADER > 255:
        raise FormatError("question name longer than 255 octets")
    end = name_end + 4
    if end > size:
        raise FormatError("question truncated")
    qtype = data[name_end] << 8 | data[name_end + 1]
    qclass = data[name_end + 2] << 8 | data[name_end + 3]
    opt, udp_limit, version = None, PLAIN_UDP_LIMIT, 0
    if data[10] or data[11] or data[6] or data[7] or data[8] or data[9]:
        opt, udp_limit, version = _edns(data, end)
    return Query(data[HEADER:name_end].lower(), qtype, qclass, end, opt, udp_limit, version)


def _edns(data: bytes, pos: int) -> tuple[bytes | None, int, int]:
    """Find the OPT record among the other sections; (reply OPT, UDP limit, version)."""
    records = sum(struct.unpack_from(">HHH", data, 6))
    found: tuple[bytes | None, int, int] | None = None
    try:
        for _ in range(records):
            pos = skip_name(data, pos)
            rtype, rclass, ttl, rdlength = struct.unpack_from(">HHIH", data, pos)
            pos += 10 + rdlength
            if pos > len(data):
                raise FormatError("record data runs past the message")
            if rtype == RecordType.OPT:
                if found is not None:
                    raise FormatError("more than one OPT record")
                version = ttl >> 16 & 0xFF
                limit = max(PLAIN_UDP_LIMIT, min(rclass, EDNS_PAYLOAD))
                found = (OPT_DO if ttl & _DO else OPT, limit, version)
    except struct.error:
        raise FormatError("record truncated") from None
    return found or (None, PLAIN_UDP_LIMIT, 0)


def skip_name(data: bytes, pos: int) -> int:
    while True:
        if pos >= len(data):
            raise FormatError("name runs past the message")
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += length + 1


def records_end(data: bytes, pos: int, count: int) -> int:
    """Where the ``count`` records starting at ``pos`` end (``data`` is trusted: ours, or an
    upstream reply already checked)."""
    for _ in range(count):
        pos = skip_name(data, pos)
        pos += 10 + (data[pos + 8] << 8 | data[pos + 9])
    return pos


def without_additional(counts: bytes, opt: bool) -> bytes:
    """Section counts with the additional records left out but OPT (RFC 2181 section 9: what
    does not fit there is dropped without setting TC)."""
    return counts[:6] + (b"\0\1" if opt else b"\0\0")


MAX_NAME = 255


def name_end(data: bytes, pos: int) -> int:
    """Where the name at ``pos`` ends, checking it all: labels within the message, pointers
    only to earlier bytes (so none can loop), at most 255 octets. ``FormatError`` otherwise."""
    end = None
    length = 0
    floor = pos  # a pointer must go before where the name (or the label it jumped to) starts
    while True:
        if pos >= len(data):
            raise FormatError("name runs past the message")
        size = data[pos]
        if size & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise FormatError("compression pointer cut short")
            target = (size & 0x3F) << 8 | data[pos + 1]
            if end is None:
                end = pos + 2
            if target >= floor:
                raise FormatError("compression pointer does not point back")
            pos = floor = target
            continue
        if size & 0xC0:
            raise FormatError("unknown label type")
        length += size + 1
        if length > MAX_NAME:
            raise FormatError("name longer than 255 octets")
        if size == 0:
            return pos + 1 if end is None else end
        pos += size + 1


def labels(qname: bytes) -> tuple[bytes, ...]:
    """The labels of a wire-form name, root excluded."""
    out = []
    pos = 0
    while qname[pos]:
        length = qname[pos]
        out.append(qname[pos + 1:pos + 1 + length])
        pos += length + 1
    return tuple(out)


def name(labels: Iterable[bytes]) -> bytes:
    """The wire form of the name made of ``labels`` (root excluded), uncompressed."""
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"


def labels_before(qname: bytes, end: int) -> list[bytes] | None:
    """The labels of a wire-form name that come before offset ``end``; None when no label
    starts there (the bytes after it only look like a name's end)."""
    out = []
    pos = 0
    while pos < end:
        length = qname[pos]
        out.append(qname[pos + 1:pos + 1 + length])
        pos += length + 1
    return out if pos == end else None


def error_reply(data: bytes, rcode: int, query: Query | None = None) -> bytes:
    """A reply that answers nothing: the header (ID, opcode, RD echoed), the question when it
    could be read, and OPT when the query had one."""
    opcode_rd = data[2] & 0x79 if len(data) > 2 else 0
    ext_rcode, rcode = rcode >> 4, rcode & 0xF
    question = b"" if query is None else data[HEADER:query.end]
    opt = b""
    if query is not None and query.opt is not None:
        opt = OPT_BADVERS if ext_rcode else query.opt
    flags = bytes((0x80 | opcode_rd, rcode))
    counts = struct.pack(">HHHH", 1 if question else 0, 0, 0, 1 if opt else 0)
    return data[:2] + flags + counts + question + opt
