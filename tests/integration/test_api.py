"""The HTTP API as a scheduler or a person uses it, against a real sdns process."""

from __future__ import annotations

import ipaddress
import time

import pytest

from tests.helpers.support import Api, SdnsProcess, wait_until

WEB = {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}


def test_healthz(sdns: SdnsProcess) -> None:
    assert sdns.api.get("/healthz").status == 200


def test_create_service_allocates_a_cluster_ip_and_keeps_it(sdns: SdnsProcess, ns: str) -> None:
    created = sdns.api.put(f"/v1/services/{ns}/web", WEB)
    assert created.status == 201
    body = created.body
    assert body["type"] == "ClusterIP"
    assert ipaddress.ip_address(body["clusterIP"]) in ipaddress.ip_network("10.96.0.0/16")
    assert body["ports"] == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]

    replaced = sdns.api.put(f"/v1/services/{ns}/web", {"ports": []})
    assert replaced.status == 200
    assert replaced.body["clusterIP"] == body["clusterIP"]
    assert sdns.api.get(f"/v1/services/{ns}/web").body == replaced.body


def test_target_port_defaults_to_port(sdns: SdnsProcess, ns: str) -> None:
    reply = sdns.api.put(f"/v1/services/{ns}/web", {"ports": [{"name": "dns", "port": 53,
                                                               "protocol": "UDP"}]})
    assert reply.body["ports"] == [{"name": "dns", "port": 53, "protocol": "UDP",
                                    "targetPort": 53}]


def test_requested_cluster_ip_is_honoured_and_exclusive(sdns: SdnsProcess, ns: str) -> None:
    assert sdns.api.put(f"/v1/services/{ns}/a", {"clusterIP": "10.96.200.7"}).body[
        "clusterIP"] == "10.96.200.7"
    taken = sdns.api.put(f"/v1/services/{ns}/b", {"clusterIP": "10.96.200.7"})
    assert taken.status == 409
    assert taken.body["field"] == "clusterIP"
    assert sdns.api.get(f"/v1/services/{ns}/b").status == 404

    outside = sdns.api.put(f"/v1/services/{ns}/c", {"clusterIP": "192.168.1.1"})
    assert outside.status == 409
    assert "outside" in outside.body["error"]

    assert sdns.api.delete(f"/v1/services/{ns}/a").status == 204
    assert sdns.api.put(f"/v1/services/{ns}/b", {"clusterIP": "10.96.200.7"}).status == 201


def test_cluster_ip_none_means_headless(sdns: SdnsProcess, ns: str) -> None:
    reply = sdns.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None"})
    assert reply.status == 201
    assert reply.body["type"] == "Headless"
    assert reply.body["clusterIP"] == "None"


def test_external_name_service(sdns: SdnsProcess, ns: str) -> None:
    reply = sdns.api.put(f"/v1/services/{ns}/ext", {"type": "ExternalName",
                                                    "externalName": "Example.ORG."})
    assert reply.status == 201
    assert reply.body["externalName"] == "example.org"
    assert reply.body["clusterIP"] is None
    refused = sdns.api.put(f"/v1/services/{ns}/ext/endpoints/e1", {"ip": "10.0.0.1"})
    assert refused.status == 409
    assert "ExternalName" in refused.body["error"]


def test_list_services_by_namespace(sdns: SdnsProcess, ns: str) -> None:
    for name in ("b", "a"):
        sdns.api.put(f"/v1/services/{ns}/{name}", {})
    listed = sdns.api.get(f"/v1/services?namespace={ns}").body["services"]
    assert [s["name"] for s in listed] == ["a", "b"]
    everything = sdns.api.get("/v1/services").body["services"]
    assert {(s["namespace"], s["name"]) for s in everything} >= {(ns, "a"), (ns, "b")}


def test_endpoint_creates_its_service(sdns: SdnsProcess, ns: str) -> None:
    reply = sdns.api.put(f"/v1/services/{ns}/web/endpoints/web-1",
                         {"ip": "10.244.1.5", "ports": {"http": 8080, "metrics": 9100}})
    assert reply.status == 201
    assert reply.body == {"id": "web-1", "ip": "10.244.1.5", "hostname": "web-1",
                          "ports": {"http": 8080, "metrics": 9100}, "ready": True, "ttl": 0,
                          "lease": None, "expiresAt": None}
    service = sdns.api.get(f"/v1/services/{ns}/web").body
    assert service["type"] == "ClusterIP"
    assert service["clusterIP"]
    assert service["ports"] == [
        {"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 8080},
        {"name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": 9100},
    ]


def test_endpoint_ports_default_to_target_ports(sdns: SdnsProcess, ns: str) -> None:
    sdns.api.put(f"/v1/services/{ns}/web", WEB)
    reply = sdns.api.put(f"/v1/services/{ns}/web/endpoints/e1",
                         {"ip": "2001:db8::1", "hostname": "pet", "ready": False})
    assert reply.body["ports"] == {"http": 8080}
    assert reply.body["hostname"] == "pet"
    assert reply.body["ready"] is False
    again = sdns.api.put(f"/v1/services/{ns}/web/endpoints/e1", {"ip": "2001:db8::2"})
    assert again.status == 200
    listed = sdns.api.get(f"/v1/services/{ns}/web/endpoints").body["endpoints"]
    assert [(e["id"], e["ip"], e["ready"]) for e in listed] == [("e1", "2001:db8::2", True)]


def test_endpoint_port_must_exist_on_service(sdns: SdnsProcess, ns: str) -> None:
    sdns.api.put(f"/v1/services/{ns}/web", WEB)
    reply = sdns.api.put(f"/v1/services/{ns}/web/endpoints/e1",
                         {"ip": "10.0.0.1", "ports": {"grpc": 9000}})
    assert reply.status == 400
    assert reply.body["field"] == "ports.grpc"
    assert sdns.api.get(f"/v1/services/{ns}/web/endpoints").body["endpoints"] == []


def test_delete_service_removes_endpoints(sdns: SdnsProcess, ns: str) -> None:
    sdns.api.put(f"/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.1"})
    assert sdns.api.delete(f"/v1/services/{ns}/web").status == 204
    assert sdns.api.get(f"/v1/services/{ns}/web").status == 404
    assert sdns.api.get(f"/v1/services/{ns}/web/endpoints").status == 404
    sdns.api.put(f"/v1/services/{ns}/web", {})
    assert sdns.api.get(f"/v1/services/{ns}/web/endpoints").body["endpoints"] == []


def test_delete_endpoint(sdns: SdnsProcess, ns: str) -> None:
    sdns.api.put(f"/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.1"})
    assert sdns.api.delete(f"/v1/services/{ns}/web/endpoints/e1").status == 204
    assert sdns.api.delete(f"/v1/services/{ns}/web/endpoints/e1").status == 404
    assert sdns.api.get(f"/v1/services/{ns}/web/endpoints").body["endpoints"] == []


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/services/{ns}/web", {"type": "LoadBalancer"}, "type"),
    ("/v1/services/{ns}/web", {"clusterIP": "10.96.0.300"}, "clusterIP"),
    ("/v1/services/{ns}/web", {"ports": [{"name": "http", "port": 0}]}, "ports[0].port"),
    ("/v1/services/{ns}/web", {"ports": [{"name": "http", "port": 70000}]}, "ports[0].port"),
    ("/v1/services/{ns}/web", {"ports": [{"name": "http", "port": 80, "targetPort": -1}]},
     "ports[0].targetPort"),
    ("/v1/services/{ns}/web", {"ports": [{"name": "http", "port": 80, "protocol": "ICMP"}]},
     "ports[0].protocol"),
    ("/v1/services/{ns}/web", {"ports": [{"name": "Http", "port": 80}]}, "ports[0].name"),
    ("/v1/services/{ns}/web", {"ports": [{"name": "a-very-long-port-name", "port": 80}]},
     "ports[0].name"),
    ("/v1/services/{ns}/web", {"ports": [{"port": 80}]}, "ports[0].name"),
    ("/v1/services/{ns}/web", {"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
     "ports[1].name"),
    ("/v1/services/{ns}/web", {"ports": "http"}, "ports"),
    ("/v1/services/{ns}/web", {"type": "ExternalName"}, "externalName"),
    ("/v1/services/{ns}/web", {"type": "ExternalName", "externalName": "bad name!"},
     "externalName"),
    ("/v1/services/{ns}/web", {"externalName": "example.org"}, "externalName"),
    ("/v1/services/{ns}/web", {"type": "Headless", "clusterIP": "10.96.0.9"}, "clusterIP"),
    ("/v1/services/{ns}/web", {"clusterIp": "10.96.0.9"}, "clusterIp"),
    ("/v1/services/{ns}/web", {"name": "other"}, "name"),
    ("/v1/services/{ns}/Web", {}, "name"),
    ("/v1/services/{ns}/-web", {}, "name"),
    ("/v1/services/Default/web", {}, "namespace"),
    ("/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.256"}, "ip"),
    ("/v1/services/{ns}/web/endpoints/e1", {"ip": "fe80::zz"}, "ip"),
    ("/v1/services/{ns}/web/endpoints/e1", {}, "ip"),
    ("/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.1", "ttl": -1}, "ttl"),
    ("/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.1", "ttl": "30"}, "ttl"),
    ("/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.1", "ready": "yes"}, "ready"),
    ("/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.1", "ports": {"http": 0}},
     "ports.http"),
    ("/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.1", "ports": [8080]}, "ports"),
    ("/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.1", "hostname": "a.b"}, "hostname"),
    ("/v1/services/{ns}/web/endpoints/E_1", {"ip": "10.0.0.1"}, "id"),
    ("/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.1", "id": "e2"}, "id"),
])
def test_invalid_input_is_a_400_and_stores_nothing(sdns: SdnsProcess, ns: str, path: str,
                                                   body: object, field: str) -> None:
    before = sdns.api.get("/v1/services").body["services"]
    reply = sdns.api.put(path.format(ns=ns), body)
    assert reply.status == 400, reply.body
    assert reply.body["field"] == field
    assert reply.body["error"]
    assert sdns.api.get("/v1/services").body["services"] == before


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"ip": "10.0.0.1", "pad": "' + b"x" * 70_000 + b'"}', "larger than 64 KiB"),
])
def test_bad_bodies_are_a_400(sdns: SdnsProcess, ns: str, raw: bytes, reason: str) -> None:
    reply = sdns.api.put(f"/v1/services/{ns}/web/endpoints/e1", raw=raw)
    assert reply.status == 400
    assert reason in reply.body["error"]
    assert sdns.api.get(f"/v1/services/{ns}/web").status == 404


def test_unknown_objects_are_404(sdns: SdnsProcess, ns: str) -> None:
    for reply in (
        sdns.api.get(f"/v1/services/{ns}/nope"),
        sdns.api.delete(f"/v1/services/{ns}/nope"),
        sdns.api.get(f"/v1/services/{ns}/nope/endpoints"),
        sdns.api.post(f"/v1/services/{ns}/nope/endpoints/e1/heartbeat"),
        sdns.api.delete(f"/v1/services/{ns}/nope/endpoints/e1"),
        sdns.api.get("/v1/nothing-here"),
    ):
        assert reply.status == 404
        assert reply.body["error"]


def test_wrong_method_is_a_json_405(sdns: SdnsProcess) -> None:
    reply = sdns.api.post("/v1/services")
    assert reply.status == 405
    assert reply.body["error"]


def test_endpoint_expires_without_heartbeat(sdns: SdnsProcess, ns: str) -> None:
    registered = sdns.api.put(f"/v1/services/{ns}/web/endpoints/e1",
                              {"ip": "10.0.0.1", "ttl": 1})
    assert registered.body["ttl"] == 1
    assert registered.body["expiresAt"].endswith("+00:00")
    path = f"/v1/services/{ns}/web/endpoints"
    took = wait_until(lambda: sdns.api.get(path).body["endpoints"] == [], timeout=2.5)
    assert took >= 0.8
    assert sdns.api.post(f"{path}/e1/heartbeat").status == 404


def test_heartbeat_keeps_an_endpoint_alive(sdns: SdnsProcess, ns: str) -> None:
    path = f"/v1/services/{ns}/web/endpoints/e1"
    first = sdns.api.put(path, {"ip": "10.0.0.1", "ttl": 1}).body
    for _ in range(6):
        time.sleep(0.4)
        beat = sdns.api.post(f"{path}/heartbeat")
        assert beat.status == 200
    assert beat.body["expiresAt"] > first["expiresAt"]
    listed = f"/v1/services/{ns}/web/endpoints"
    assert sdns.api.get(listed).body["endpoints"] != []
    wait_until(lambda: sdns.api.get(listed).body["endpoints"] == [], timeout=2.5)
    assert sdns.api.post(f"{path}/heartbeat").status == 404


def test_heartbeat_on_endpoint_without_ttl(sdns: SdnsProcess, ns: str) -> None:
    path = f"/v1/services/{ns}/web/endpoints/e1"
    sdns.api.put(path, {"ip": "10.0.0.1"})
    beat = sdns.api.post(f"{path}/heartbeat")
    assert beat.status == 200
    assert beat.body["expiresAt"] is None


def test_concurrent_allocations_are_distinct(sdns: SdnsProcess, ns: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    api = Api(sdns.api.base)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: api.put(f"/v1/services/{ns}/s{i}", {}), range(100)))
    assert all(r.status == 201 for r in replies)
    assert len({r.body["clusterIP"] for r in replies}) == 100
