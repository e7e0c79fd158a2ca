"""The VIP balancer: connections to clusterIP:port reach the service's ready endpoints."""

from __future__ import annotations

import contextlib
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.endpoints import CLIENT_SCRIPT, SERVER_SCRIPT, TcpEndpoint, UdpEndpoint, connect
from tests.helpers.metrics import scrape, value
from tests.helpers.netns import Netns, missing_netns
from tests.helpers.support import SdnsProcess, wait_until

MakeSdns = Callable[..., SdnsProcess]
CIDR = "127.96.0.0/16"  # loopback: the userspace proxy needs no privileges


@pytest.fixture
def balanced(make_sdns: MakeSdns) -> SdnsProcess:
    return make_sdns("--balancer", "userspace", "--service-cidr", CIDR)


@pytest.fixture
def servers() -> Iterator[list[TcpEndpoint]]:
    made = [TcpEndpoint(f"e{i}") for i in range(3)]
    yield made
    for server in made:
        server.stop()


def _accepting(vip: str, port: int) -> bool:
    try:
        socket.create_connection((vip, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _behind_vip(process: SdnsProcess) -> set[str]:
    """The ids of the endpoints the balancer sends the first VIP's connections to."""
    services = process.api.get("/v1/balancer").body["services"]
    return {e["id"] for e in services[0]["endpoints"]} if services else set()


def _register(process: SdnsProcess, servers: list[TcpEndpoint], **service: object) -> str:
    body = {"ports": [{"name": "http", "port": 8080}], **service}
    vip = process.api.put("/v1/services/default/web", body).body["clusterIP"]
    for server in servers:
        process.api.put(f"/v1/services/default/web/endpoints/{server.name}",
                        {"ip": "127.0.0.1", "ports": {"http": server.port}})
    wait_until(lambda: _accepting(vip, 8080), timeout=3)
    return vip


def test_round_robin_over_ready_endpoints(balanced: SdnsProcess,
                                          servers: list[TcpEndpoint]) -> None:
    vip = _register(balanced, servers)
    got = Counter(connect(vip, 8080) for _ in range(300))
    assert got == {"e0": 100, "e1": 100, "e2": 100}


def test_a_stopped_endpoint_is_skipped(balanced: SdnsProcess,
                                       servers: list[TcpEndpoint]) -> None:
    vip = _register(balanced, servers)
    servers[1].stop()
    got = Counter(connect(vip, 8080) for _ in range(300))
    assert sum(got.values()) == 300  # every client got through
    assert set(got) == {"e0", "e2"}
    table = balanced.api.get("/v1/balancer").body
    states = {e["id"]: e["state"] for e in table["services"][0]["endpoints"]}
    assert states["e1"] == "down"
    samples = scrape(balanced.api.base)
    labels = {"service": "default/web", "port": "http"}
    assert value(samples, "sdns_balancer_connections_total", **labels) == 301  # and the probe
    assert value(samples, "sdns_balancer_endpoint_up", **labels) == 2


def test_a_deregistered_endpoint_takes_no_new_connection(balanced: SdnsProcess,
                                                         servers: list[TcpEndpoint]) -> None:
    vip = _register(balanced, servers)
    assert balanced.api.delete("/v1/services/default/web/endpoints/e0").status == 204
    wait_until(lambda: _behind_vip(balanced) == {"e1", "e2"}, timeout=3)
    got = Counter(connect(vip, 8080) for _ in range(60))
    assert got == {"e1": 30, "e2": 30}
    balanced.api.put("/v1/services/default/web/endpoints/e1",
                     {"ip": "127.0.0.1", "ports": {"http": servers[1].port}, "ready": False})
    wait_until(lambda: _behind_vip(balanced) == {"e2"}, timeout=3)
    assert Counter(connect(vip, 8080) for _ in range(10)) == {"e2": 10}


def test_client_ip_affinity_pins_a_client(balanced: SdnsProcess,
                                          servers: list[TcpEndpoint]) -> None:
    vip = _register(balanced, servers, sessionAffinity="ClientIP")
    got = Counter(connect(vip, 8080) for _ in range(30))
    assert len(got) == 1 and sum(got.values()) == 30


@pytest.fixture
def udp_service(balanced: SdnsProcess) -> Iterator[tuple[str, list[UdpEndpoint]]]:
    """A UDP service on port 5353 with three endpoints, served: (its VIP, the endpoints)."""
    udp = [UdpEndpoint(f"u{i}") for i in range(3)]
    try:
        vip = balanced.api.put("/v1/services/default/dns", {"ports": [
            {"name": "dns", "port": 5353, "protocol": "UDP"}]}).body["clusterIP"]
        for server in udp:
            balanced.api.put(f"/v1/services/default/dns/endpoints/{server.name}",
                             {"ip": "127.0.0.1", "ports": {"dns": server.port}})
        wait_until(lambda: _behind_vip(balanced) == {"u0", "u1", "u2"}, timeout=3)
        wait_until(lambda: balanced.api.get("/v1/balancer").body["services"][0]["serving"],
                   timeout=3)
        yield vip, udp
    finally:
        for server in udp:
            server.stop()


def test_udp_flows_round_robin(udp_service: tuple[str, list[UdpEndpoint]]) -> None:
    vip, _ = udp_service
    answered = Counter()
    with contextlib.ExitStack() as open_clients:  # open till the end: 30 distinct source
        for _ in range(30):  # ports, so 30 flows (a port used again is the same flow)
            client = open_clients.enter_context(socket.socket(socket.AF_INET,
                                                              socket.SOCK_DGRAM))
            client.settimeout(2)
            client.sendto(b"q", (vip, 5353))
            first = client.recv(64).decode()
            client.sendto(b"q", (vip, 5353))  # the same flow stays with its endpoint
            assert client.recv(64).decode() == first
            answered[first] += 1
    assert answered == {"u0": 10, "u1": 10, "u2": 10}


def test_udp_datagrams_sent_while_a_flow_opens_join_it(
        udp_service: tuple[str, list[UdpEndpoint]]) -> None:
    vip, udp = udp_service
    with contextlib.ExitStack() as open_clients:  # distinct source ports, as above
        for _ in range(10):
            client = open_clients.enter_context(socket.socket(socket.AF_INET,
                                                              socket.SOCK_DGRAM))
            client.settimeout(2)
            for _ in range(3):  # back to back: the flow is still opening for the others
                client.sendto(b"q", (vip, 5353))
            assert len({client.recv(64) for _ in range(3)}) == 1
    assert sum(len(server.flows) for server in udp) == 10  # one flow per client


def test_a_vip_port_that_could_not_be_bound_is_retried(balanced: SdnsProcess,
                                                       servers: list[TcpEndpoint]) -> None:
    vip = "127.96.200.9"
    blocker = socket.socket()
    blocker.bind((vip, 8080))
    blocker.listen()
    try:
        balanced.api.put("/v1/services/default/web", {"clusterIP": vip, "ports": [
            {"name": "http", "port": 8080}]})
        balanced.api.put("/v1/services/default/web/endpoints/e0",
                         {"ip": "127.0.0.1", "ports": {"http": servers[0].port}})
        wait_until(lambda: _behind_vip(balanced) == {"e0"}, timeout=3)
        assert balanced.api.get("/v1/balancer").body["services"][0]["serving"] is False
    finally:
        blocker.close()
    wait_until(lambda: balanced.api.get("/v1/balancer").body["services"][0]["serving"],
               timeout=10)
    assert connect(vip, 8080) == "e0"


def test_timed_out_client_ip_affinity_is_forgotten(make_sdns: MakeSdns,
                                                  servers: list[TcpEndpoint]) -> None:
    process = make_sdns("--balancer", "userspace", "--service-cidr", CIDR,
                        "--balancer-sync", "1")
    vip = _register(process, servers, sessionAffinity="ClientIP", sessionAffinityTimeout=1)
    connect(vip, 8080)
    assert process.api.get("/v1/balancer").body["services"][0]["affinities"] == 1
    wait_until(lambda: process.api.get("/v1/balancer").body["services"][0]["affinities"] == 0,
               timeout=5)

def test_a_dual_stack_service_is_served_on_both_vips(make_sdns: MakeSdns) -> None:
    if os.geteuid() != 0:
        pytest.skip("an IPv6 VIP outside ::1 goes on lo, which needs root")
    process = make_sdns("--balancer", "userspace", "--service-cidr",
                        "127.97.0.0/16,fd00:97::/112")
    v4, v6 = TcpEndpoint("v4", "127.0.0.1"), TcpEndpoint("v6", "::1")
    try:
        vips = process.api.put("/v1/services/default/dual", {
            "ipFamilyPolicy": "RequireDualStack",
            "ports": [{"name": "http", "port": 8080}]}).body["clusterIPs"]
        for server in (v4, v6):
            process.api.put(f"/v1/services/default/dual/endpoints/{server.name}",
                            {"ip": "::1" if server.name == "v6" else "127.0.0.1",
                             "ports": {"http": server.port}})
        for vip in vips:
            wait_until(lambda vip=vip: _accepting(vip, 8080), timeout=5)
        # each VIP spreads over the endpoints of its own family
        assert {connect(vips[0], 8080) for _ in range(4)} == {"v4"}
        assert {connect(vips[1], 8080) for _ in range(4)} == {"v6"}
    finally:
        v4.stop()
        v6.stop()

def test_balancer_table_counts_connections(balanced: SdnsProcess,
                                           servers: list[TcpEndpoint]) -> None:
    vip = _register(balanced, servers)
    held = socket.create_connection((vip, 8080))
    held.sendall(b"x")
    try:
        wait_until(lambda: sum(e["connections"] for e in balanced.api.get("/v1/balancer").body[
            "services"][0]["endpoints"]) == 1, timeout=2)
        table = balanced.api.get("/v1/balancer").body
        assert table["mode"] == "userspace"
        service = table["services"][0]
        assert (service["vip"], service["vipPort"], service["protocol"]) == (vip, 8080, "TCP")
        assert {e["id"] for e in service["endpoints"]} == {"e0", "e1", "e2"}
    finally:
        held.close()


def test_nftables_round_robin_in_a_namespace(tmp_path) -> None:
    import ast
    import os
    import shutil
    import sys

    reason = missing_netns() or (None if shutil.which("nft") else
                                 "nft is not installed (make test installs nftables)")
    if reason:
        pytest.skip(reason)
    netns = Netns(f"sdns-nft-{os.getpid()}")
    try:
        endpoints = [f"10.244.5.{i}" for i in (1, 2, 3)]
        for ip in endpoints:
            netns.run("ip", "addr", "add", f"{ip}/32", "dev", "lo")
            netns.start(sys.executable, "-c", SERVER_SCRIPT, ip, "8080", ip,
                        log=tmp_path / "servers.log")
        api = netns.start_sdns("--forward", "off", "--balancer", "nftables",
                               "--service-cidr", "10.96.0.0/12", log=tmp_path / "sdns.log")
        vip = json_field(api("PUT", "/v1/services/default/web",
                             '{"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}'),
                         "clusterIP")
        for i, ip in enumerate(endpoints):
            api("PUT", f"/v1/services/default/web/endpoints/e{i}", f'{{"ip": "{ip}"}}')
        wait_until(lambda: netns.run("nft", "list", "table", "inet", "sdns").count(
            "10.244.5.") == 3, timeout=5)
        out = netns.run(sys.executable, "-c", CLIENT_SCRIPT, vip, "80", "30")
        assert ast.literal_eval(out) == {ip: 10 for ip in endpoints}
        netns.processes[-1].terminate()
        netns.processes[-1].wait(10)
        tables = netns.run("nft", "list", "tables")
        assert "sdns" not in tables  # the table goes with a clean shutdown
    finally:
        netns.remove()


def json_field(text: str, field: str) -> object:
    import json

    return json.loads(text)[field]
