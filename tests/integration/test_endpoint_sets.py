"""PUT of a whole endpoint set: what a scheduler sends after a rollout, applied in one revision
on every backend."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.support import SdnsProcess, Watch

ZONE = "svc.cluster.local"


def _addresses(process: SdnsProcess, name: str) -> list[str]:
    reply = process.query(f"{name}.{ZONE}")
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


def test_a_set_replaces_the_endpoints_in_one_revision(sdns: SdnsProcess, ns: str) -> None:
    sdns.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None",
                                           "ports": [{"name": "sql", "port": 5432}]})
    for i in range(3):
        sdns.api.put(f"/v1/services/{ns}/db/endpoints/e{i}", {"ip": f"10.251.0.{i}"})
    watch = Watch(sdns.api)
    try:
        reply = sdns.api.put(f"/v1/services/{ns}/db/endpoints", {"endpoints": [
            {"id": "e1", "ip": "10.251.1.1", "ports": {"sql": 6432}},
            {"id": "e3", "ip": "10.251.1.3"}]})
        assert reply.status == 200, reply.body
        events = watch.take(4, namespace=ns)
    finally:
        watch.close()
    assert [e["id"] for e in reply.body["endpoints"]] == ["e1", "e3"]
    assert {e["revision"] for e in events} == {reply.body["revision"]}
    assert sorted((e["action"], e["id"]) for e in events) == [
        ("delete", "e0"), ("delete", "e2"), ("put", "e1"), ("put", "e3")]
    listed = sdns.api.get(f"/v1/services/{ns}/db/endpoints").body["endpoints"]
    assert [(e["id"], e["ip"], e["ports"]) for e in listed] == [
        ("e1", "10.251.1.1", {"sql": 6432}), ("e3", "10.251.1.3", {"sql": 5432})]
    assert _addresses(sdns, f"db.{ns}") == ["10.251.1.1", "10.251.1.3"]
    emptied = sdns.api.put(f"/v1/services/{ns}/db/endpoints", {"endpoints": []})
    assert emptied.status == 200
    assert sdns.api.get(f"/v1/services/{ns}/db/endpoints").body["endpoints"] == []


def test_a_set_creates_its_service_and_takes_leases_and_ttls(sdns: SdnsProcess,
                                                             ns: str) -> None:
    lease = sdns.api.post("/v1/leases", {"ttl": 30}).body["id"]
    reply = sdns.api.put(f"/v1/services/{ns}/web/endpoints", {"endpoints": [
        {"id": "a", "ip": "10.251.2.1", "ports": {"http": 8080}, "lease": lease},
        {"id": "b", "ip": "10.251.2.2", "ports": {"http": 8080}, "ttl": 30}]})
    assert reply.status == 201, reply.body
    service = sdns.api.get(f"/v1/services/{ns}/web").body
    assert [p["name"] for p in service["ports"]] == ["http"]
    assert sdns.api.get(f"/v1/leases/{lease}").body["endpoints"] == 1
    assert sdns.api.post(f"/v1/services/{ns}/web/endpoints/b/heartbeat").status == 200


def test_a_large_set_is_one_revision(sdns: SdnsProcess, ns: str) -> None:
    items = [{"id": f"e{i}", "ip": f"10.252.{i // 250}.{i % 250 + 1}"} for i in range(1000)]
    reply = sdns.api.put(f"/v1/services/{ns}/big/endpoints", {"endpoints": items})
    assert reply.status == 201, reply.body
    assert len(sdns.api.get(f"/v1/services/{ns}/big/endpoints").body["endpoints"]) == 1000
    again = sdns.api.put(f"/v1/services/{ns}/big/endpoints", {"endpoints": items[500:]})
    assert again.status == 200
    assert len(sdns.api.get(f"/v1/services/{ns}/big/endpoints").body["endpoints"]) == 500


@pytest.mark.parametrize(("body", "field"), [
    ({"endpoints": [{"id": "a", "ip": "10.0.0.1"}, {"id": "b", "ip": "nope"}]},
     "endpoints[1].ip"),
    ({"endpoints": [{"id": "a", "ip": "10.0.0.1"}, {"id": "a", "ip": "10.0.0.2"}]},
     "endpoints[1].id"),
    ({"endpoints": [{"ip": "10.0.0.1"}]}, "endpoints[0].id"),
    ({"endpoints": [{"id": "a", "ip": "10.0.0.1", "lease": "{lease}", "ttl": 5}]},
     "endpoints[0].lease"),
    ({"endpoints": [{"id": "a", "ip": "10.0.0.1"}, {"id": "b", "ip": "10.0.0.2",
                                                    "lease": "abcdef"}]},
     "endpoints[1].lease"),
    ({"endpoints": [{"id": "a", "ip": "10.0.0.1", "ports": {"nope": 1}}]},
     "endpoints[0].ports.nope"),
    ({"endpoints": {"id": "a"}}, "endpoints"),
    ({"endpoints": [{"id": "a", "ip": "10.0.0.1"}], "extra": 1}, "extra"),
])
def test_a_bad_set_is_a_400_naming_the_item_and_stores_nothing(sdns: SdnsProcess, ns: str,
                                                                body: dict,
                                                                field: str) -> None:
    lease = sdns.api.post("/v1/leases", {"ttl": 30}).body["id"]
    sdns.api.put(f"/v1/services/{ns}/db", {"ports": [{"name": "sql", "port": 5432}]})
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/kept", {"ip": "10.251.3.1"})
    body = json.loads(json.dumps(body).replace("{lease}", lease))
    reply = sdns.api.put(f"/v1/services/{ns}/db/endpoints", body)
    assert reply.status == 400, reply.body
    assert reply.body["field"] == field
    listed = sdns.api.get(f"/v1/services/{ns}/db/endpoints").body["endpoints"]
    assert [e["id"] for e in listed] == ["kept"]


def test_a_set_over_4_mib_is_a_413(sdns: SdnsProcess, ns: str) -> None:
    padding = "x" * (4 * 1024 * 1024)
    reply = sdns.api.put(f"/v1/services/{ns}/db/endpoints",
                         raw=json.dumps({"endpoints": [], "pad": padding}).encode())
    assert reply.status == 413
    assert reply.body["field"] == "body"
    assert sdns.api.get(f"/v1/services/{ns}/db").status == 404


def test_an_empty_set_answers_at_once(sdns: SdnsProcess, ns: str) -> None:
    # found by the contract fuzzing: an empty set changes nothing, and was waited for as a
    # revision that never came (202 after 5 s)
    for _ in range(2):  # the first creates the service, the second changes nothing at all
        started = time.monotonic()
        reply = sdns.api.put(f"/v1/services/{ns}/empty/endpoints", {"endpoints": []})
        assert reply.status in (200, 201), reply.body
        assert reply.body["endpoints"] == []
        assert time.monotonic() - started < 1
    assert sdns.api.get(f"/v1/services/{ns}/empty/endpoints").body == {"endpoints": []}
