"""sdns as the resolver of containers: names outside the zone go upstream, on loopback only."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.helpers.metrics import scrape, value
from tests.helpers.support import SDNS, SdnsProcess, free_port, query, wait_until
from tests.helpers.upstream import BROKEN, FakeUpstream

MakeSdns = Callable[..., SdnsProcess]


def answers(reply: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


@pytest.fixture
def upstream() -> Iterator[Callable[..., FakeUpstream]]:
    made: list[FakeUpstream] = []

    def make(mode: str = "answer", **kwargs: object) -> FakeUpstream:
        server = FakeUpstream(mode, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[int]:
    """A real upstream standing in for the outside world."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (make test installs dnsmasq-base)")
    port = free_port()
    process = subprocess.Popen(
        ["dnsmasq", "--no-daemon", "--port", str(port), "--listen-address", "127.0.0.1",
         "--bind-interfaces", "--no-resolv", "--no-hosts", "--local-ttl=300",
         "--host-record=example.org,192.0.2.10", "--host-record=db.example.org,192.0.2.11",
         "--local=/example.org/", "--log-facility=/dev/null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _answers_at(port), timeout=10)
    yield port
    process.terminate()
    process.wait(10)


def _answers_at(port: int) -> bool:
    try:
        return bool(query(port, "example.org").answer)
    except (OSError, dns.exception.Timeout):
        return False


def test_forwards_to_a_real_upstream(make_sdns: MakeSdns, dnsmasq: int,
                                     dig_available: None) -> None:
    process = make_sdns("--forward", f"127.0.0.1:{dnsmasq}")
    assert answers(process.query("example.org")) == ["192.0.2.10"]
    assert process.dig("+short", "db.example.org").split() == ["192.0.2.11"]
    assert process.query("nope.example.org").rcode() == dns.rcode.NXDOMAIN
    assert answers(process.query("example.org", tcp=True)) == ["192.0.2.10"]


def test_answers_are_cached_and_ttls_count_down(make_sdns: MakeSdns, upstream) -> None:
    server = upstream(ttl=300)
    process = make_sdns("--forward", server.address)
    first = process.query("www.example.com")
    assert answers(first) == ["192.0.2.1", "192.0.2.2"]
    assert first.answer[0].ttl == 300
    time.sleep(1.1)
    second = process.query("WWW.Example.com")
    assert server.queries == 1
    assert second.answer[0].ttl < 300
    assert second.question[0].name.to_text() == "WWW.Example.com."


def test_truncated_upstream_answer_is_fetched_over_tcp(make_sdns: MakeSdns, upstream) -> None:
    server = upstream("truncate")
    process = make_sdns("--forward", server.address)
    reply = process.query("big.example.com")
    assert answers(reply) == ["192.0.2.1", "192.0.2.2"]
    assert not reply.flags & dns.flags.TC
    assert server.queries == 2  # once over UDP, once over TCP


def test_replies_with_another_id_are_ignored(make_sdns: MakeSdns, upstream) -> None:
    server = upstream("wrong-id")
    process = make_sdns("--forward", server.address)
    assert answers(process.query("spoof.example.com")) == ["192.0.2.1", "192.0.2.2"]


def test_silent_upstream_fails_over_to_the_next(make_sdns: MakeSdns, upstream) -> None:
    silent, good = upstream("silent"), upstream()
    process = make_sdns("--forward", f"{silent.address},{good.address}")
    start = time.monotonic()
    reply = query(process.dns_port, "failover.example.com")
    assert answers(reply) == ["192.0.2.1", "192.0.2.2"]
    assert silent.queries == 1
    assert 1.5 < time.monotonic() - start < 3.5  # the first one had its timeout


def test_all_upstreams_failing_is_servfail(make_sdns: MakeSdns, upstream) -> None:
    process = make_sdns("--forward", upstream("silent").address)
    message = dns.message.make_query("down.example.com", "A")
    reply = dns.query.udp(message, "127.0.0.1", port=process.dns_port, timeout=5)
    assert reply.rcode() == dns.rcode.SERVFAIL


def test_expired_answer_is_served_stale_when_upstreams_fail(make_sdns: MakeSdns,
                                                            upstream) -> None:
    server = upstream(ttl=1)
    process = make_sdns("--forward", server.address, "--serve-stale", "60")
    assert answers(process.query("stale.example.com")) == ["192.0.2.1", "192.0.2.2"]
    server.mode = "silent"
    time.sleep(1.2)
    message = dns.message.make_query("stale.example.com", "A")
    reply = dns.query.udp(message, "127.0.0.1", port=process.dns_port, timeout=5)
    assert answers(reply) == ["192.0.2.1", "192.0.2.2"]
    assert reply.answer[0].ttl == 30
    samples = scrape(process.api.base)
    assert value(samples, "sdns_forward_served_stale_total") == 1
    assert value(samples, "sdns_forward_requests_total", to=server.address) == 2
    assert value(samples, "sdns_forward_responses_total", to=server.address,
                 rcode="NOERROR") == 1
    assert value(samples, "sdns_cache_hits_total", type="success") == 1  # the stale one


def test_negative_answers_are_cached_by_soa_minimum(make_sdns: MakeSdns, upstream) -> None:
    server = upstream("nxdomain")
    process = make_sdns("--forward", server.address)
    for _ in range(3):
        reply = process.query("missing.example.com")
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert reply.authority[0].ttl <= 60
    assert server.queries == 1


def test_identical_queries_share_one_upstream_query(make_sdns: MakeSdns, upstream) -> None:
    server = upstream("slow", delay=0.5)
    process = make_sdns("--forward", server.address)
    results: list[dns.message.Message] = []

    def ask() -> None:
        results.append(query(process.dns_port, "shared.example.com"))

    threads = [threading.Thread(target=ask) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(answers(r) == ["192.0.2.1", "192.0.2.2"] for r in results)
    assert server.queries == 1


def _query_from(source: str, port: int, name: str) -> dns.message.Message:
    message = dns.message.make_query(name, "A")
    return dns.query.udp(message, "127.0.0.1", port=port, timeout=3, source=source)


def _ask_together(port: int, name: str, count: int = 20) -> list[dns.message.Message | str]:
    """``count`` identical queries at once; each reply, or what went wrong with it."""
    results: list[dns.message.Message | str] = ["not answered"] * count

    def ask(i: int) -> None:
        try:
            results[i] = query(port, name)
        except dns.exception.Timeout:
            results[i] = "timed out"

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


@pytest.mark.parametrize("shape", BROKEN)
def test_a_malformed_upstream_reply_fails_every_waiter_cleanly(make_sdns: MakeSdns, upstream,
                                                                shape: str) -> None:
    broken = upstream(shape, delay=0.3)  # slow enough for all 20 to share one lookup
    process = make_sdns("--forward", broken.address)
    results = _ask_together(process.dns_port, f"{shape}.example.com")
    assert [r if isinstance(r, str) else dns.rcode.to_text(r.rcode()) for r in results] == \
        ["SERVFAIL"] * 20
    assert broken.queries == 1


@pytest.mark.parametrize("shape", BROKEN)
def test_a_malformed_upstream_reply_gives_way_to_the_next(make_sdns: MakeSdns, upstream,
                                                          shape: str) -> None:
    broken, good = upstream(shape, delay=0.3), upstream()
    process = make_sdns("--forward", f"{broken.address},{good.address}")
    results = _ask_together(process.dns_port, f"{shape}.example.com")
    assert [r if isinstance(r, str) else answers(r) for r in results] == \
        [["192.0.2.1", "192.0.2.2"]] * 20
    assert (broken.queries, good.queries) == (1, 1)

def test_forwarding_only_for_allowed_clients(make_sdns: MakeSdns, upstream) -> None:
    server = upstream()
    process = make_sdns("--forward", server.address, "--forward-allow", "127.0.0.2/32")
    process.api.put("/v1/services/default/web", {})
    assert _query_from("127.0.0.1", process.dns_port, "open.example.com").rcode() == \
        dns.rcode.REFUSED
    assert server.queries == 0
    assert answers(_query_from("127.0.0.2", process.dns_port, "open.example.com")) == [
        "192.0.2.1", "192.0.2.2"]
    cluster = _query_from("127.0.0.1", process.dns_port, "web.default.svc.cluster.local")
    assert cluster.rcode() == dns.rcode.NOERROR and cluster.answer


def test_unknown_reverse_names_are_forwarded(make_sdns: MakeSdns, upstream) -> None:
    server = upstream()
    process = make_sdns("--forward", server.address)
    process.query("9.9.0.192.in-addr.arpa", "PTR")
    assert server.queries == 1


def test_sdns_does_not_forward_to_itself(tmp_path) -> None:
    from sdns.config import Config, HostPort, upstreams

    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\nnameserver 127.0.0.53\nsearch x\n")
    config = Config(dns_addr=HostPort("127.0.0.1", 53))
    assert upstreams(config, resolv) == [HostPort("127.0.0.53", 53)]
    assert upstreams(Config(forward=("off",)), resolv) == []


def test_resolv_conf_command() -> None:

    out = subprocess.run([SDNS, "resolv-conf", "--namespace", "shop", "--nameserver",
                          "10.96.0.10"], capture_output=True, text=True, check=True).stdout
    assert out == ("nameserver 10.96.0.10\n"
                   "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
                   "options ndots:5\n")


