"""Active health checks run by sdns itself, against real HTTP and TCP servers on loopback:
an endpoint is served only while its check passes, status changes alone are written, and with
several replicas each endpoint is checked by exactly one of them."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.endpoints import HttpEndpoint
from tests.helpers.servers import backend_args
from tests.helpers.support import SdnsProcess, wait_until

MakeSdns = Callable[..., SdnsProcess]


@pytest.fixture
def http_server() -> Iterator[HttpEndpoint]:
    server = HttpEndpoint()
    yield server
    server.stop()


def _endpoint(process: SdnsProcess, name: str = "web", endpoint_id: str = "w1") -> dict:
    return {e["id"]: e for e in process.api.get(
        f"/v1/services/shop/{name}/endpoints").body["endpoints"]}[endpoint_id]


def _served(process: SdnsProcess, name: str = "web") -> bool:
    """Whether DNS sends clients to the endpoint (headless: its address is in the answer)."""
    return bool(process.query(f"{name}.shop.svc.cluster.local").answer)


def _headless(process: SdnsProcess, name: str = "web") -> None:
    process.api.put(f"/v1/services/shop/{name}", {"clusterIP": "None",
                                                  "ports": [{"name": "http", "port": 80}]})


def test_an_http_check_takes_the_endpoint_out_and_back(make_sdns: MakeSdns,
                                                       http_server: HttpEndpoint) -> None:
    process = make_sdns()
    _headless(process)
    check = {"type": "http", "port": "http", "path": "/healthz", "interval": 1, "rise": 2,
             "fall": 2}
    reply = process.api.put("/v1/services/shop/web/endpoints/w1", {
        "ip": "127.0.0.1", "ports": {"http": http_server.port}, "check": check})
    assert reply.status == 201, reply.body
    assert reply.body["health"] == "unknown" and reply.body["check"]["timeout"] == 0.5
    assert not _served(process)  # unknown is not served
    wait_until(lambda: _endpoint(process)["health"] == "passing", timeout=4)
    assert _served(process)
    assert _endpoint(process)["lastCheck"]["output"] == "HTTP 200"
    http_server.status = 503
    failing = time.monotonic()
    wait_until(lambda: not _served(process), timeout=2 * 1 + 2)
    assert time.monotonic() - failing <= 2 * 1 + 1.5  # fall x interval + 1 s
    endpoint = _endpoint(process)
    assert endpoint["health"] == "critical" and endpoint["lastCheck"]["output"] == "HTTP 503"
    http_server.status = 200
    wait_until(lambda: _served(process), timeout=4)
    # a steady state writes nothing
    revision = process.api.get("/readyz").body["revision"]
    time.sleep(2.5)
    assert process.api.get("/readyz").body["revision"] == revision


def test_a_tcp_check_and_a_port_that_times_out(make_sdns: MakeSdns) -> None:
    process = make_sdns("--check-deregister-after", "3")
    _headless(process)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    process.api.put("/v1/services/shop/web/endpoints/w1", {
        "ip": "127.0.0.1", "ports": {"http": port}, "check": {"type": "tcp", "interval": 1}})
    wait_until(lambda: _endpoint(process)["health"] == "passing", timeout=4)
    listener.close()
    wait_until(lambda: _endpoint(process)["health"] == "critical", timeout=5)
    assert "refused" in _endpoint(process)["lastCheck"]["output"].lower()
    # a server that takes the connection and never answers: the HTTP probe times out
    silent = socket.create_server(("127.0.0.1", 0))
    process.api.put("/v1/services/shop/slow/endpoints/w1", {
        "ip": "127.0.0.1", "ports": {"http": silent.getsockname()[1]},
        "check": {"type": "http", "interval": 2, "timeout": 0.3, "fall": 1}})
    wait_until(lambda: _endpoint(process, "slow")["health"] == "critical", timeout=5)
    assert _endpoint(process, "slow")["lastCheck"]["output"] == "timed out after 0.3 s"
    silent.close()
    # critical for 3 s: deregistered
    wait_until(lambda: process.api.get("/v1/services/shop/web/endpoints").body["endpoints"]
               == [], timeout=6)


def test_check_input_is_validated(make_sdns: MakeSdns) -> None:
    process = make_sdns()
    base = {"ip": "10.1.1.1", "ports": {"http": 80}}
    for check, field in [({"type": "icmp"}, "check.type"),
                         ({"type": "http", "interval": 0}, "check.interval"),
                         ({"type": "http", "interval": 5, "timeout": 5}, "check.timeout"),
                         ({"type": "http", "rise": 11}, "check.rise"),
                         ({"type": "http", "fall": 0}, "check.fall"),
                         ({"type": "http", "path": "healthz"}, "check.path"),
                         ({"type": "tcp", "path": "/x"}, "check.path"),
                         ({"type": "http", "port": "metrics"}, "check.port"),
                         ({"type": "http", "url": "http://example.com"}, "url")]:
        reply = process.api.put("/v1/services/shop/web/endpoints/w1", {**base, "check": check})
        assert (reply.status, reply.body.get("field")) == (400, field), (check, reply.body)
    assert process.api.get("/v1/services/shop/web").status == 404  # nothing stored


def test_two_replicas_check_each_endpoint_once(make_sdns: MakeSdns,
                                               request: pytest.FixtureRequest) -> None:
    shared = backend_args(request, "etcd")
    a, b = make_sdns(*shared), make_sdns(*shared)
    wait_until(lambda: len(a.api.get("/v1/status").body["replicas"]) == 2, timeout=5)
    servers = [HttpEndpoint() for _ in range(8)]
    try:
        for i, server in enumerate(servers):
            a.api.put(f"/v1/services/shop/web/endpoints/w{i}", {
                "ip": "127.0.0.1", "ports": {"http": server.port},
                "check": {"type": "http", "interval": 1}})
        wait_until(lambda: all(e["health"] == "passing" for e in a.api.get(
            "/v1/services/shop/web/endpoints").body["endpoints"]), timeout=6)
        time.sleep(2.5)  # both replicas know both: let the first probes settle
        before = [s.hits for s in servers]
        time.sleep(4)
        hits = [s.hits - h for s, h in zip(servers, before, strict=True)]
        # once a second by one replica: about 4 each, never twice as many
        assert all(3 <= h <= 5 for h in hits), hits
        # the other replica is killed: once its presence runs out (10 s), its endpoints move
        # to the one left, and every endpoint is probed once a second again
        b.stop(signal.SIGKILL)
        wait_until(lambda: len(a.api.get("/v1/status").body["replicas"]) == 1, timeout=14)
        time.sleep(2.5)
        before = [s.hits for s in servers]
        time.sleep(3)
        hits = [s.hits - h for s, h in zip(servers, before, strict=True)]
        assert all(2 <= h <= 4 for h in hits), hits
    finally:
        for server in servers:
            server.stop()
