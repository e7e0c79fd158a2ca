"""Forwarded answers as the cache hands them back: truncation by RFC 2181 section 9."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rrset

from sdns.dns import wire
from sdns.dns.forward import Forwarder, ForwardSettings


def test_additional_records_that_do_not_fit_are_dropped_without_tc() -> None:
    query = dns.message.make_query("mail.example.org", "MX")
    upstream = dns.message.make_response(query)
    upstream.use_edns(False)
    upstream.answer.append(dns.rrset.from_text("mail.example.org.", 300, "IN", "MX",
                                               "10 mx.example.org."))
    upstream.additional.append(dns.rrset.from_text(
        "mx.example.org.", 300, "IN", "AAAA", *[f"2001:db8::{i}" for i in range(30)]))
    data = query.to_wire()
    cached = Forwarder(ForwardSettings(()))._store(wire.parse(data), upstream.to_wire())

    reply = cached.reply(data, wire.parse(data), udp=True)
    assert len(reply) <= 512
    message = dns.message.from_wire(reply)
    assert not message.flags & dns.flags.TC
    assert [rd.to_text() for rrset in message.answer for rd in rrset] == ["10 mx.example.org."]
    assert message.additional == []

    whole = dns.message.from_wire(cached.reply(data, wire.parse(data), udp=False))
    assert len(whole.additional[0]) == 30
