"""DNS traffic counted in plain integers by the thread that serves it, read when metrics are
scraped (``sdns.metrics``).

A reply is one increment of a dict cell whose key is an int packing all the metrics tell about
it (question type, rcode, size, what the cache did), so a reply from the packet cache costs one
dict update with a key made when the packet was cached: about 60 ns of the 7 us such a reply
costs, where a prometheus-client ``labels().inc()`` takes about 1.5 us and a lock. A Tally has
one writer thread; the scrape reads it from the loop, which the GIL makes safe (a count read
while it moves is one reply early or late).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import NamedTuple

from sdns.dns.wire import RecordType, is_denial

# The question types metrics tell apart (CoreDNS's set); the rest are "other".
TYPES = ("A", "AAAA", "SRV", "PTR", "CNAME", "TXT", "SOA", "NS", "ANY")
OTHER = len(TYPES)
_TYPE_INDEX = {int(RecordType[name]): i for i, name in enumerate(TYPES)}

# What a cache did for a reply: not a question it keeps; looked and built it; served a
# success or a denial (NXDOMAIN, or no answer records), as CoreDNS's cache plugin counts them.
UNCACHED, MISS, SUCCESS, DENIAL = range(4)
CACHED = SUCCESS  # to ``key``: served from a cache, a success or a denial as the reply says

# CoreDNS's buckets: request durations 0.25 ms doubling 16 times, response sizes in bytes.
DURATION_BUCKETS = tuple(0.00025 * 2**k for k in range(16))
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)


def type_name(index: int) -> str:
    return TYPES[index] if index < OTHER else "other"


def key(qtype: int, reply: bytes, outcome: int) -> int:
    """The cell of ``reply`` to a question of ``qtype``."""
    rcode = reply[3] & 0x0F
    if outcome == CACHED and is_denial(rcode, reply[6] << 8 | reply[7]):
        outcome = DENIAL
    return ((len(reply) << 4 | rcode) << 4 | _TYPE_INDEX.get(qtype, OTHER)) << 2 | outcome


def outcome(key: int) -> int:
    return key & 0x03


def with_outcome(key: int, outcome: int) -> int:
    """``key`` for the same reply with another cache outcome."""
    return key & ~0x03 | outcome


class Reply(NamedTuple):
    type: str
    rcode: int
    size: int
    outcome: int


def unpack(key: int) -> Reply:
    return Reply(type_name(key >> 2 & 0x0F), key >> 6 & 0x0F, key >> 10, outcome(key))


class Tally:
    """The replies of one protocol as written by one thread, and how long they took."""

    __slots__ = ("cells", "duration_sum", "durations")

    def __init__(self) -> None:
        self.cells: dict[int, int] = {}
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)  # the last: above every bucket
        self.duration_sum = 0.0

    def count(self, key: int) -> None:
        cells = self.cells
        cells[key] = cells.get(key, 0) + 1

    def took(self, seconds: float, replies: int = 1) -> None:
        """``replies`` replies that took ``seconds`` each, from receipt to reply."""
        self.durations[bisect.bisect_left(DURATION_BUCKETS, seconds)] += replies
        self.duration_sum += seconds * replies


class Tallies:
    """A responder's tallies: UDP from its thread, UDP the loop answers, TCP."""

    __slots__ = ("tcp", "udp_loop", "udp_thread")

    def __init__(self) -> None:
        self.udp_thread, self.udp_loop, self.tcp = Tally(), Tally(), Tally()

    def by_protocol(self) -> Iterator[tuple[str, Tally]]:
        yield "udp", self.udp_thread
        yield "udp", self.udp_loop
        yield "tcp", self.tcp

    def on_loop(self, udp: bool) -> Tally:
        return self.udp_loop if udp else self.tcp
