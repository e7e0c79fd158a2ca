"""Leases: one renewal keeps many endpoints alive, on every backend; a renewal writes nothing
anyone watches; expiry and deletion drop every endpoint of a lease in one revision."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import dns.rcode
import pytest

from tests.helpers.servers import backend_args
from tests.helpers.support import SdnsProcess, Watch, wait_until

ZONE = "svc.cluster.local"
MakeSdns = Callable[..., SdnsProcess]


def _unix(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def _lease(process: SdnsProcess, ttl: int) -> dict:
    made = process.api.post("/v1/leases", {"ttl": ttl})
    assert made.status == 201, made.body
    assert set(made.body) == {"id", "ttl", "expiresAt"}
    return made.body


def _register(process: SdnsProcess, ns: str, lease: str, count: int = 3) -> None:
    """``count`` endpoints of the headless service ``db`` held by ``lease``."""
    process.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None"})
    for i in range(count):
        reply = process.api.put(f"/v1/services/{ns}/db/endpoints/e{i}",
                                {"ip": f"10.250.0.{i + 1}", "lease": lease})
        assert reply.status == 201, reply.body


def _addresses(process: SdnsProcess, ns: str) -> list[str]:
    reply = process.query(f"db.{ns}.{ZONE}")
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


def _ids(process: SdnsProcess, ns: str) -> list[str]:
    return [e["id"] for e in process.api.get(f"/v1/services/{ns}/db/endpoints").body[
        "endpoints"]]


def test_a_lease_keeps_its_endpoints_while_renewed_and_drops_them_after(sdns: SdnsProcess,
                                                                        ns: str) -> None:
    lease = _lease(sdns, 2)
    _register(sdns, ns, lease["id"])
    last = lease
    for _ in range(6):  # 3 s of renewals, past the ttl
        time.sleep(0.5)
        renewed = sdns.api.post(f"/v1/leases/{lease['id']}/renew")
        assert renewed.status == 200, renewed.body
        assert _unix(renewed.body["expiresAt"]) > _unix(last["expiresAt"])
        last = renewed.body
    assert _addresses(sdns, ns) == ["10.250.0.1", "10.250.0.2", "10.250.0.3"]
    deadline = _unix(last["expiresAt"])
    # nothing expires before its expiresAt...
    time.sleep(max(0.0, deadline - time.time() - 0.3))
    assert _ids(sdns, ns) == ["e0", "e1", "e2"]
    # ...and all of it goes within a second after
    wait_until(lambda: _ids(sdns, ns) == [], timeout=deadline + 1.2 - time.time())
    assert sdns.query(f"db.{ns}.{ZONE}").rcode() == dns.rcode.NXDOMAIN
    assert sdns.api.post(f"/v1/leases/{lease['id']}/renew").status == 404
    assert sdns.api.get(f"/v1/leases/{lease['id']}").status == 404


def test_deleting_a_lease_removes_its_endpoints_at_once_in_one_revision(sdns: SdnsProcess,
                                                                        ns: str) -> None:
    lease = _lease(sdns, 60)
    _register(sdns, ns, lease["id"])
    sdns.api.put(f"/v1/services/{ns}/db/endpoints/kept", {"ip": "10.250.0.9"})
    watch = Watch(sdns.api)
    try:
        assert sdns.api.delete(f"/v1/leases/{lease['id']}").status == 204
        assert _ids(sdns, ns) == ["kept"]  # as soon as the call returns
        assert _addresses(sdns, ns) == ["10.250.0.9"]
        events = watch.take(3, namespace=ns)
    finally:
        watch.close()
    assert sorted((e["action"], e["id"]) for e in events) == [
        ("delete", "e0"), ("delete", "e1"), ("delete", "e2")]
    assert len({e["revision"] for e in events}) == 1
    assert sdns.api.delete(f"/v1/leases/{lease['id']}").status == 404


def test_deleting_a_lease_that_holds_nothing_answers_at_once(sdns: SdnsProcess) -> None:
    lease = sdns.api.post("/v1/leases", {"ttl": 60}).body["id"]
    started = time.monotonic()
    assert sdns.api.delete(f"/v1/leases/{lease}").status == 204
    assert time.monotonic() - started < 1
    assert sdns.api.get(f"/v1/leases/{lease}").status == 404


def test_renewals_and_heartbeats_add_nothing_to_the_watch(sdns: SdnsProcess, ns: str) -> None:
    lease = _lease(sdns, 30)
    _register(sdns, ns, lease["id"], count=1)
    path = f"/v1/services/{ns}/db/endpoints/beating"
    sdns.api.put(path, {"ip": "10.250.0.8", "ttl": 30})
    watch = Watch(sdns.api)
    try:
        for _ in range(5):
            assert sdns.api.post(f"/v1/leases/{lease['id']}/renew").status == 200
            assert sdns.api.post(f"{path}/heartbeat").status == 200
        sdns.api.put(f"/v1/services/{ns}/marker", {})
        assert [(e["kind"], e["service"]) for e in watch.take(1, namespace=ns)] == [
            ("service", "marker")]
    finally:
        watch.close()


def test_concurrent_renewals_each_get_their_own_outcome(sdns: SdnsProcess) -> None:
    """Renewals that arrive together may go to the store together (ZooKeeper: one multi);
    a lease deleted among them fails alone."""
    leases = [_lease(sdns, 30) for _ in range(40)]
    gone = {lease["id"] for lease in leases[::8]}
    for lease_id in gone:
        assert sdns.api.delete(f"/v1/leases/{lease_id}").status == 204
    with ThreadPoolExecutor(len(leases)) as pool:
        replies = list(pool.map(lambda lease: sdns.api.post(f"/v1/leases/{lease['id']}/renew"),
                                leases))
    for lease, reply in zip(leases, replies, strict=True):
        if lease["id"] in gone:
            assert reply.status == 404, reply.body
        else:
            assert reply.status == 200, reply.body
            assert _unix(reply.body["expiresAt"]) > _unix(lease["expiresAt"])
            shown = _unix(sdns.api.get(f"/v1/leases/{lease['id']}").body["expiresAt"])
            # etcd tells a lease's time to live in whole seconds
            assert _unix(reply.body["expiresAt"]) - 1 <= shown <= _unix(reply.body["expiresAt"])


def test_a_lease_shows_its_endpoints_and_they_show_its_deadline(sdns: SdnsProcess,
                                                                ns: str) -> None:
    lease = _lease(sdns, 30)
    _register(sdns, ns, lease["id"], count=2)
    got = sdns.api.get(f"/v1/leases/{lease['id']}").body
    assert (got["id"], got["ttl"], got["endpoints"]) == (lease["id"], 30, 2)
    listed = sdns.api.get(f"/v1/services/{ns}/db/endpoints").body["endpoints"]
    assert {(e["lease"], e["ttl"]) for e in listed} == {(lease["id"], 0)}
    time.sleep(2.1)  # etcd tells a lease's time left in whole seconds, rounded down
    renewed = sdns.api.post(f"/v1/leases/{lease['id']}/renew").body
    listed = sdns.api.get(f"/v1/services/{ns}/db/endpoints").body["endpoints"]
    for endpoint in listed:  # the renewal moved every deadline, with no write to them
        assert _unix(lease["expiresAt"]) < _unix(endpoint["expiresAt"])
        assert _unix(endpoint["expiresAt"]) <= _unix(renewed["expiresAt"]) + 0.01


def test_a_heartbeat_moves_the_deadline_shown(sdns: SdnsProcess, ns: str) -> None:
    path = f"/v1/services/{ns}/web/endpoints/e1"
    first = sdns.api.put(path, {"ip": "10.250.1.1", "ttl": 30}).body
    assert first["lease"] is None  # its own lease is not the user's business
    time.sleep(2.1)  # etcd tells a lease's time left in whole seconds, rounded down
    beat = sdns.api.post(f"{path}/heartbeat").body
    shown = sdns.api.get(f"/v1/services/{ns}/web/endpoints").body["endpoints"][0]
    assert _unix(first["expiresAt"]) < _unix(shown["expiresAt"])
    assert _unix(shown["expiresAt"]) <= _unix(beat["expiresAt"]) + 0.01


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/leases", {}, "ttl"),
    ("/v1/leases", {"ttl": 0}, "ttl"),
    ("/v1/leases", {"ttl": 86401}, "ttl"),
    ("/v1/leases", {"ttl": "30"}, "ttl"),
    ("/v1/leases", {"ttl": 30, "owner": "me"}, "owner"),
    ("/v1/services/{ns}/db/endpoints/e1", {"ip": "10.0.0.1", "lease": "{lease}", "ttl": 5},
     "lease"),
    ("/v1/services/{ns}/db/endpoints/e1", {"ip": "10.0.0.1", "lease": "abc123"}, "lease"),
    ("/v1/services/{ns}/db/endpoints/e1", {"ip": "10.0.0.1", "lease": "NOT-HEX"}, "lease"),
    ("/v1/services/{ns}/db/endpoints/e1", {"ip": "10.0.0.1", "lease": 7}, "lease"),
])
def test_bad_lease_input_is_a_400_and_stores_nothing(sdns: SdnsProcess, ns: str, path: str,
                                                     body: dict, field: str) -> None:
    lease = _lease(sdns, 30)
    sdns.api.put(f"/v1/services/{ns}/db", {"clusterIP": "None"})
    body = {k: v.format(lease=lease["id"]) if isinstance(v, str) else v
            for k, v in body.items()}
    method = sdns.api.post if path == "/v1/leases" else sdns.api.put
    reply = method(path.format(ns=ns), body)
    assert reply.status == 400, reply.body
    assert reply.body["field"] == field
    assert _ids(sdns, ns) == []
    assert sdns.api.get(f"/v1/leases/{lease['id']}").body["endpoints"] == 0


def test_lease_ids_in_paths(sdns: SdnsProcess) -> None:
    assert sdns.api.get("/v1/leases/not-a-lease").status == 400
    assert sdns.api.get("/v1/leases/0123abcd").status == 404
    assert sdns.api.post("/v1/leases/0123abcd/renew").status == 404
    assert sdns.api.delete("/v1/leases/0123abcd").status == 404


# On etcd and ZooKeeper: across restarts and replicas

@pytest.fixture(params=["etcd", "zookeeper"])
def shared(request: pytest.FixtureRequest) -> list[str]:
    return backend_args(request, request.param)


def test_a_restart_keeps_leases_and_their_remaining_time(make_sdns: MakeSdns,
                                                         shared: list[str], ns: str) -> None:
    first = make_sdns(*shared)
    lease = _lease(first, 4)
    _register(first, ns, lease["id"], count=2)
    assert first.stop() == 0
    second = make_sdns(*shared)
    got = second.api.get(f"/v1/leases/{lease['id']}")
    assert got.status == 200
    assert got.body["endpoints"] == 2
    assert abs(_unix(got.body["expiresAt"]) - _unix(lease["expiresAt"])) <= 1.0
    assert _addresses(second, ns) == ["10.250.0.1", "10.250.0.2"]
    wait_until(lambda: _ids(second, ns) == [], timeout=_unix(lease["expiresAt"]) + 1.5
               - time.time())


def test_two_replicas_see_the_same_expiry(make_sdns: MakeSdns, shared: list[str],
                                          ns: str) -> None:
    a, b = make_sdns(*shared), make_sdns(*shared)
    lease = _lease(a, 2)
    _register(a, ns, lease["id"], count=2)
    wait_until(lambda: _ids(b, ns) == ["e0", "e1"], timeout=2)
    renewed = b.api.post(f"/v1/leases/{lease['id']}/renew")  # through the other replica
    assert renewed.status == 200
    # the renewal's own deadline: what GET reads back from etcd counts whole seconds, down
    deadline = _unix(renewed.body["expiresAt"])
    for replica in (a, b):
        wait_until(lambda replica=replica: _ids(replica, ns) == [],
                   timeout=deadline + 1.2 - time.time())
    assert time.time() >= deadline - 1.0  # renewed through b, so not at a's first deadline


def test_a_heartbeat_through_another_replica_right_after_registering(
        make_sdns: MakeSdns, shared: list[str], ns: str) -> None:
    # the other replica may not have the endpoint in its view yet: it reads the store
    a, b = make_sdns(*shared), make_sdns(*shared)
    for i in range(60):
        assert a.api.put(f"/v1/services/{ns}/web/endpoints/e{i}",
                         {"ip": f"10.252.0.{i + 1}", "ttl": 30}).status == 201
        beat = b.api.post(f"/v1/services/{ns}/web/endpoints/e{i}/heartbeat")
        assert beat.status == 200, (i, beat.body)
        assert beat.body["id"] == f"e{i}"
