from __future__ import annotations

import tracemalloc

import dns.edns
import dns.message
import pytest
from dnslib import AAAA, RR, A, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from sdns.dns import cache
from sdns.dns.cache import (
    ANSWER_OVERHEAD,
    PACKET_OVERHEAD,
    VALIDITY_OVERHEAD,
    AnswerCache,
    PacketCache,
    encode,
)
from sdns.dns.responder import Responder
from sdns.dns.wire import RecordType
from sdns.dns.zone import Address, Answer, Zone
from sdns.model import Service
from sdns.store import Snapshot
from sdns.view import View

NAME = b"\x03web\x07default\x00"


def _entry(tags: frozenset) -> object:
    rr = RR(DNSLabel("web.default"), RecordType.A, ttl=5, rdata=A("10.0.0.1"))
    return encode(NAME, RecordType.A, Answer(0, (rr,), tags=tags))


def test_addresses_of_the_question_are_encoded_as_dnslib_encodes_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    owner = DNSLabel("web.default")
    for qtype, ips, rdata in ((RecordType.A, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], A),
                              (RecordType.AAAA, ["fd00::1", "fd00::2"], AAAA),
                              (RecordType.A, ["10.0.0.9"], A)):
        made = encode(NAME, qtype, Answer(0, tuple(RR(owner, qtype, ttl=5, rdata=rdata(ip))
                                                   for ip in ips)))
        with monkeypatch.context() as patched:  # joined without dnslib's encoder
            patched.setattr(cache, "DNSRecord", None)
            joined = encode(NAME, qtype, Answer(0, tuple(Address(owner, ip, 5) for ip in ips)))
        assert (joined.flags, joined.counts, joined.rest) == (made.flags, made.counts, made.rest)
        assert joined.records == made.records  # served in turn, one address first each time
        # and dnslib writes them the same when the encoder is needed (other records beside)
        packed = DNSRecord(DNSHeader(id=0, qr=1, aa=1, rd=0, ra=0), q=DNSQuestion(owner, qtype),
                           rr=[Address(owner, ip, 5) for ip in ips]).pack()
        assert packed[12 + len(NAME) + 4:] == made.rest


def test_invalidate_drops_only_tagged_entries() -> None:
    cache = AnswerCache(1 << 20, 1 << 20)
    cache.put((b"a", 1), _entry(frozenset({"x"})))
    cache.put((b"b", 1), _entry(frozenset({"y"})))
    cache.put((b"c", 1), _entry(frozenset({"x", "y"})))
    cache.invalidate(["x"])
    assert cache.get((b"a", 1)) is None
    assert cache.get((b"c", 1)) is None
    assert cache.get((b"b", 1)) is not None


def test_the_byte_bound_evicts_oldest_and_forgets_its_tags() -> None:
    size = ANSWER_OVERHEAD + len(b"999") + len(_entry(frozenset()).rest)
    cache = AnswerCache(3 * size, 0)
    for i in range(1000):
        cache.put((str(i).encode(), 1), _entry(frozenset({("svc", i)})))
    assert len(cache) == 3
    assert cache.get((b"999", 1)) is not None
    assert len(cache._by_tag) == 3
    assert cache.bytes <= cache.max_bytes
    cache.invalidate([("svc", i) for i in range(1000)])
    assert (len(cache), cache.bytes) == (0, 0)


def test_dropped_entries_turn_invalid() -> None:
    cache = AnswerCache(1, 0)  # room for one entry at a time
    first = _entry(frozenset({"x"}))
    cache.put((b"a", 1), first)
    cache.put((b"b", 1), _entry(frozenset({"y"})))
    assert first.validity[0] == 0
    second = cache.get((b"b", 1))
    cache.invalidate(["y"])
    assert second.validity[0] == 0


def test_a_validity_is_one_per_tag_until_a_change_touches_the_tag() -> None:
    cache = AnswerCache(1 << 20, 1 << 20)
    web, db = cache.validity(("svc", "default", "web")), cache.validity(("svc", "default", "db"))
    assert cache.validity(("svc", "default", "web")) is web
    cache.invalidate([("svc", "default", "web")])
    assert (web[0], db[0]) == (0, 1)
    again = cache.validity(("svc", "default", "web"))
    assert again is not web and again[0] == 1
    cache.clear()
    assert (again[0], db[0], cache.validity_bytes) == (0, 0, 0)


def test_validities_have_a_bound_of_their_own() -> None:
    """A flood of first answers, each with a validity, pushes out the oldest validities only,
    never the answers asked all the time."""
    entry = _entry(frozenset({"x"}))
    cache = AnswerCache(ANSWER_OVERHEAD + 100, 3 * VALIDITY_OVERHEAD)
    cache.put((b"a", 1), entry)
    made = [cache.validity(("svc", "default", f"name{i}")) for i in range(10)]
    assert [v[0] for v in made] == [0] * 7 + [1] * 3  # the oldest went first
    assert entry.validity[0] == 1 and cache.get((b"a", 1)) is entry
    assert cache.validity_bytes == 3 * VALIDITY_OVERHEAD
    cache.invalidate(["x", *(("svc", "default", f"name{i}") for i in range(10))])
    assert (len(cache), cache.bytes, cache.validity_bytes) == (0, 0, 0)


def test_the_packet_cache_keeps_to_its_bytes() -> None:
    entry = _entry(frozenset())
    packets = PacketCache(10_000)
    for i in range(1000):
        packets.put(f"query-{i}".encode(), entry.validity, b"r" * 100, 0)
    assert packets.bytes <= 10_000
    assert packets.get(b"query-999") is not None
    assert packets.get(b"query-0") is None
    packets.put(b"query-999", entry.validity, b"r" * 10, 0)  # a replacement is counted once
    assert packets.bytes == sum(PACKET_OVERHEAD + len(k) + len(r)
                                for k, (_, r, _) in packets._replies.items())


def test_the_bound_counts_what_entries_really_take() -> None:
    """What the caches count is never much less than what Python really allocates for them, so
    --cache-mb bounds the memory it says, nor much more, so the caches are not needlessly
    small."""
    answers, packets = AnswerCache(1 << 30, 0), PacketCache(1 << 30)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            name = f"\x07name{i:03d}\x07default\x03svc\x00".encode()
            entry = _entry(frozenset({("svc", ("default", f"name{i}")), ("ns", "default")}))
            answers.put((name, 1), entry)
            packets.put(b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01",
                        entry.validity, b"\x81\x80" + b"r" * 60, 1 << 20)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = answers.bytes + packets.bytes
    assert 0.9 * used <= counted <= 1.4 * used, (used, counted)


def test_the_bound_counts_what_first_answers_really_take() -> None:
    """First answers the UDP thread makes through the parser (names under services that do not
    exist, asked with an EDNS cookie as dig asks, so not denied straight from the query's bytes)
    leave a packet and a validity under each name's tag, made of names decoded from the
    question; what the caches count is as near what Python allocates for them, bound reached or
    not."""
    view = View()
    view.load(Snapshot(revision=1, services=[Service("default", "web")], endpoints={}))
    for bound in (1 << 30, 4 << 20):
        responder = Responder(Zone("cluster.local", 5, view), cache_bytes=bound)
        cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")
        queries = [dns.message.make_query(f"r{i}.default.svc.cluster.local", "A",
                                          options=[cookie]).to_wire() for i in range(20_000)]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for query in queries:
                responder.cached_reply(query)
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        counted = (responder.cache.bytes + responder.cache.validity_bytes
                   + responder.packets.bytes)
        assert 0.9 * used <= counted <= 1.4 * used, (bound, used, counted)
