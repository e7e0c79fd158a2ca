"""/metrics of a real sdns: the numbers move as queries, misses, registrations and expiries
happen, and every DNS worker's counts are in one scrape."""

from __future__ import annotations

from collections.abc import Callable

import dns.rcode
import pytest

from tests.helpers.metrics import scrape, value
from tests.helpers.servers import backend_args
from tests.helpers.support import SdnsProcess, wait_until

MakeSdns = Callable[..., SdnsProcess]


def test_queries_move_the_dns_and_cache_counters(make_sdns: MakeSdns) -> None:
    process = make_sdns()
    process.api.put("/v1/services/shop/web/endpoints/w1", {"ip": "10.7.0.1",
                                                          "ports": {"http": 80}})
    before = scrape(process.api.base)
    for _ in range(10):
        assert process.query("web.shop.svc.cluster.local").answer
    for _ in range(3):
        assert process.query("nope.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert process.query("_http._tcp.web.shop.svc.cluster.local", "SRV", tcp=True).answer
    after = scrape(process.api.base)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("sdns_dns_requests_total", proto="udp", family="1", type="A") == 13
    assert moved("sdns_dns_requests_total", proto="tcp", family="1", type="SRV") == 1
    assert moved("sdns_dns_responses_total", rcode="NOERROR") == 11
    assert moved("sdns_dns_responses_total", rcode="NXDOMAIN") == 3
    # the first of each question is built, the rest come from a cache; a ClusterIP service's
    # address was made before it was asked, so its first question is a hit too; a name under a
    # service that does not exist is denied from the query's bytes when first asked (a hit),
    # built and kept when asked again, and a hit from then on
    assert moved("sdns_cache_requests_total") == 14
    assert moved("sdns_cache_hits_total", type="success") == 10
    assert moved("sdns_cache_hits_total", type="denial") == 2
    assert moved("sdns_dns_request_duration_seconds_count") == 14
    assert moved("sdns_dns_response_size_bytes_count", proto="udp") == 13
    assert moved("sdns_dns_response_size_bytes_sum", proto="tcp") > 12
    assert value(after, "sdns_cache_entries", type="success") >= 1  # SRV; the A was prepared
    assert value(after, "sdns_cache_entries", type="denial") >= 1
    assert value(after, "sdns_services") == 1
    assert value(after, "sdns_endpoints", ready="true") == 1
    assert value(after, "sdns_store_up") == 1
    assert value(after, "sdns_watch_revision") == process.api.get("/readyz").body["revision"]
    assert any(name == "sdns_build_info" for name, _ in after)


def test_writes_and_programming_latency_are_counted(make_sdns: MakeSdns) -> None:
    process = make_sdns()
    before = scrape(process.api.base)
    process.api.put("/v1/services/shop/web", {})
    process.api.put("/v1/services/shop/web/endpoints/w1", {"ip": "10.7.0.1"})
    process.api.put("/v1/services/shop/web/endpoints/w2", {"ip": "10.7.0.2"})
    process.api.delete("/v1/services/shop/web/endpoints/w2")
    lease = process.api.post("/v1/leases", {"ttl": 30}).body["id"]
    process.api.post(f"/v1/leases/{lease}/renew")
    assert process.api.put("/v1/services/shop/web/endpoints/w3", {"ip": "bad"}).status == 400
    after = scrape(process.api.base)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("sdns_registry_writes_total", kind="service", action="put") == 1
    assert moved("sdns_registry_writes_total", kind="endpoint", action="put") == 2
    assert moved("sdns_registry_writes_total", kind="endpoint", action="delete") == 1
    assert moved("sdns_registry_writes_total", kind="lease", action="create") == 1
    assert moved("sdns_registry_writes_total", kind="lease", action="renew") == 1
    assert moved("sdns_dns_programming_duration_seconds_count") == 4
    assert value(after, "sdns_endpoints", ready="true") == 1


@pytest.mark.parametrize("backend", ["memory", "zookeeper"])
def test_expiries_are_counted(make_sdns: MakeSdns, request: pytest.FixtureRequest,
                              backend: str) -> None:
    # etcd expires its leases itself and does not tell why a key went: not counted there
    process = make_sdns(*backend_args(request, backend))
    before = value(scrape(process.api.base), "sdns_registry_expired_total")
    process.api.put("/v1/services/shop/web/endpoints/w1", {"ip": "10.7.0.1", "ttl": 1})
    lease = process.api.post("/v1/leases", {"ttl": 1}).body["id"]
    for i in (2, 3):
        process.api.put(f"/v1/services/shop/web/endpoints/w{i}", {"ip": f"10.7.0.{i}",
                                                                 "lease": lease})
    wait_until(lambda: value(scrape(process.api.base), "sdns_registry_expired_total")
               == before + 3, timeout=8)
    assert value(scrape(process.api.base), "sdns_endpoints", ready="true") == 0


def test_every_worker_is_in_one_scrape(make_sdns: MakeSdns,
                                       request: pytest.FixtureRequest) -> None:
    process = make_sdns(*backend_args(request, "etcd"), "--workers", "2")
    process.api.put("/v1/services/shop/web", {})
    wait_until(lambda: process.query("web.shop.svc.cluster.local").answer, timeout=5)
    before = value(scrape(process.api.base), "sdns_dns_requests_total", proto="udp",
                   family="1", type="A")
    # each query comes from a new source port, so the kernel spreads them over both processes
    for _ in range(60):
        assert process.query("web.shop.svc.cluster.local").answer
    wait_until(lambda: value(scrape(process.api.base), "sdns_dns_requests_total", proto="udp",
                             family="1", type="A") == before + 60, timeout=5)


def test_metrics_need_a_read_token_unless_open(make_sdns: MakeSdns, tmp_path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text('[[token]]\nname = "r"\nsecret = "reader-secret-0123456789"\n'
                    'scope = "read"\n')
    guarded = make_sdns("--tokens", str(path))
    assert guarded.api.get("/metrics").status == 401
    assert value(scrape(guarded.api.base, "reader-secret-0123456789"), "sdns_store_up") == 1
    opened = make_sdns("--tokens", str(path), "--metrics-open")
    assert value(scrape(opened.api.base), "sdns_store_up") == 1
    assert opened.api.get("/v1/services").status == 401
