from __future__ import annotations

from dnslib import RR, A, DNSLabel

from sdns.dns.cache import AnswerCache, encode
from sdns.dns.wire import RecordType
from sdns.dns.zone import Answer

NAME = b"\x03web\x07default\x00"


def _entry(tags: frozenset) -> object:
    rr = RR(DNSLabel("web.default"), RecordType.A, ttl=5, rdata=A("10.0.0.1"))
    return encode(NAME, RecordType.A, Answer(0, (rr,), tags=tags))


def test_invalidate_drops_only_tagged_entries() -> None:
    cache = AnswerCache(10)
    cache.put((b"a", 1), _entry(frozenset({"x"})))
    cache.put((b"b", 1), _entry(frozenset({"y"})))
    cache.put((b"c", 1), _entry(frozenset({"x", "y"})))
    cache.invalidate(["x"])
    assert cache.get((b"a", 1)) is None
    assert cache.get((b"c", 1)) is None
    assert cache.get((b"b", 1)) is not None


def test_capacity_evicts_oldest_and_forgets_its_tags() -> None:
    cache = AnswerCache(3)
    for i in range(1000):
        cache.put((str(i).encode(), 1), _entry(frozenset({("svc", i)})))
    assert len(cache) == 3
    assert cache.get((b"999", 1)) is not None
    assert len(cache._by_tag) == 3


def test_dropped_entries_turn_invalid() -> None:
    cache = AnswerCache(1)
    first = _entry(frozenset({"x"}))
    cache.put((b"a", 1), first)
    cache.put((b"b", 1), _entry(frozenset({"y"})))
    assert first.valid is False
    second = cache.get((b"b", 1))
    cache.invalidate(["y"])
    assert second.valid is False
