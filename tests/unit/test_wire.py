from __future__ import annotations

import dns.message
import pytest

from sdns.dns import wire


def test_parse_plain_query() -> None:
    data = dns.message.make_query("Web.Default.svc.cluster.local", "SRV").to_wire()
    query = wire.parse(data)
    assert query.qname == b"\x03web\x07default\x03svc\x07cluster\x05local\x00"
    assert (query.qtype, query.qclass, query.opt, query.udp_limit) == (33, 1, None, 512)
    assert query.end == len(data)
    assert wire.labels(query.qname) == (b"web", b"default", b"svc", b"cluster", b"local")


@pytest.mark.parametrize(("payload", "limit"), [(4096, 1232), (1232, 1232), (900, 900),
                                                (100, 512)])
def test_parse_edns(payload: int, limit: int) -> None:
    data = dns.message.make_query("a.b", "A", use_edns=0, payload=payload,
                                  want_dnssec=True).to_wire()
    query = wire.parse(data)
    assert query.udp_limit == limit
    assert query.opt == wire.OPT_DO


def test_two_opt_records_are_formerr() -> None:
    data = dns.message.make_query("a.b", "A", use_edns=0).to_wire()
    opt = data[-11:]
    doubled = data[:10] + b"\x00\x02" + data[12:] + opt
    with pytest.raises(wire.FormatError):
        wire.parse(doubled)


def test_responses_and_short_packets_are_dropped() -> None:
    with pytest.raises(wire.Drop):
        wire.parse(b"\x00" * 11)
    reply = dns.message.make_response(dns.message.make_query("a.b", "A")).to_wire()
    with pytest.raises(wire.Drop):
        wire.parse(reply)


def test_name_over_255_octets_is_formerr() -> None:
    header = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    name = b"\x3f" + b"a" * 63
    with pytest.raises(wire.FormatError):
        wire.parse(header + name * 5 + b"\x00\x00\x01\x00\x01")


def test_error_reply_keeps_id_question_and_opt() -> None:
    data = dns.message.make_query("x.y", "A", use_edns=0).to_wire()
    reply = dns.message.from_wire(wire.error_reply(data, wire.Rcode.REFUSED, wire.parse(data)))
    assert reply.rcode() == 5
    assert reply.question[0].name.to_text() == "x.y."
    assert reply.edns == 0


@pytest.mark.parametrize(("data", "pos", "end"), [
    (b"\x03www\x07example\x00", 0, 13),
    (b"\x07example\x00\x03www\xc0\x00", 9, 15),  # a label, then a pointer back
    (b"\x00", 0, 1),
])
def test_name_end(data: bytes, pos: int, end: int) -> None:
    assert wire.name_end(data, pos) == end


@pytest.mark.parametrize(("data", "pos"), [
    (b"\x03www", 0),  # runs past the message
    (b"\xc0\x00", 0),  # points at itself
    (b"\x01a\xc0\x04\x01b\xc0\x00", 4),  # two pointers that point at each other
    (b"\x01a\xc0", 0),  # pointer cut short
    (b"\x41abc\x00", 0),  # reserved label type
    (b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + b"\x3f" + b"d" * 63
     + b"\x00", 0),  # 257 octets
])
def test_name_end_refuses_broken_names(data: bytes, pos: int) -> None:
    with pytest.raises(wire.FormatError):
        wire.name_end(data, pos)
