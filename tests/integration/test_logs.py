"""Logs as operators read them: JSON lines with --log-format json, and per-query lines only
with --log-queries."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest

from sdns.dns.querylog import QueryLog
from tests.helpers.support import SdnsProcess, wait_until

MakeSdns = Callable[..., SdnsProcess]
QUERY = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x04shop\x00\x00\x01\x00\x01"
REPLY = b"\x12\x34\x81\x83" + QUERY[4:]


def test_json_lines_with_the_query_log(make_sdns: MakeSdns) -> None:
    process = make_sdns("--log-format", "json", "--log-queries")
    process.api.put("/v1/services/shop/web", {})
    assert process.query("web.shop.svc.cluster.local").answer
    assert process.query("web.shop.svc.cluster.local", tcp=True).answer

    def lines() -> list[dict[str, object]]:
        return [json.loads(line) for line in process.output().splitlines() if line.strip()]

    wait_until(lambda: sum(line["logger"] == "sdns.query" for line in lines()) == 2, timeout=5)
    for line in lines():
        assert {"time", "level", "logger", "event"} <= set(line)
    queries = [line for line in lines() if line["logger"] == "sdns.query"]
    assert {q["proto"] for q in queries} == {"udp", "tcp"}
    for q in queries:
        assert (q["qname"], q["qtype"], q["rcode"], q["client"]) == (
            "web.shop.svc.cluster.local.", "A", "NOERROR", "127.0.0.1")
        assert q["size"] > 0 and q["duration"] >= 0


def test_no_query_lines_by_default(make_sdns: MakeSdns) -> None:
    process = make_sdns()
    process.api.put("/v1/services/shop/web", {})
    assert process.query("web.shop.svc.cluster.local").answer
    assert "sdns.query" not in process.output()
    assert process.output().splitlines()[0][:4].isdigit()  # text: the date first


def test_the_query_log_keeps_to_its_rate(caplog: pytest.LogCaptureFixture) -> None:
    querylog = QueryLog(max_per_second=5)
    with caplog.at_level(logging.INFO, logger="sdns.query"):
        for _ in range(20):
            querylog.record("udp", ("127.0.0.1", 5300), QUERY, REPLY, 0.0001)
    assert len(caplog.records) == 5
    assert caplog.records[0].name == "sdns.query"
    assert "web.shop. A NXDOMAIN" in caplog.records[0].getMessage()
    querylog._second -= 1  # as if the second had passed
    with caplog.at_level(logging.INFO, logger="sdns.query"):
        querylog.record("udp", ("127.0.0.1", 5300), QUERY, REPLY, 0.0001)
    assert "15 queries not logged" in caplog.records[5].getMessage()
