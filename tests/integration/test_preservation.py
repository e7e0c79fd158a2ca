"""Self-preservation on every backend: 100 endpoints on leases; stop renewing 40 and they stay
served and flagged; registering them again ends it and expiry is normal again; with it off,
they go."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.helpers.servers import backend_args
from tests.helpers.support import Api, SdnsProcess, wait_until

MakeSdns = Callable[..., SdnsProcess]
COUNT, STOPPED, TTL = 100, 40, 2


class Owners:
    """The agents of 100 endpoints: a lease each, renewed every TTL/3 s while not stopped."""

    def __init__(self, process: SdnsProcess) -> None:
        self.api = Api(process.api.base)
        self.api.put("/v1/services/shop/web", {"clusterIP": "None"})
        self.leases = [""] * COUNT
        self.stopped: set[int] = set()
        for i in range(COUNT):
            self.register(i)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True)
        self._thread.start()

    def register(self, i: int) -> None:
        self.leases[i] = self.api.post("/v1/leases", {"ttl": TTL}).body["id"]
        reply = self.api.put(f"/v1/services/shop/web/endpoints/e{i}", {
            "ip": f"10.250.{i // 200}.{i % 200 + 1}", "lease": self.leases[i]})
        assert reply.status in (200, 201), reply.body

    def _renew(self) -> None:
        while not self._done.wait(TTL / 4):
            for i in range(COUNT):
                if i not in self.stopped:
                    self.api.post(f"/v1/leases/{self.leases[i]}/renew")

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


@contextmanager
def owners(process: SdnsProcess) -> Iterator[Owners]:
    made = Owners(process)
    try:
        yield made
    finally:
        made.stop()


def _served(process: SdnsProcess) -> int:
    return len([rd for rrset in process.query("web.shop.svc.cluster.local", tcp=True).answer
                for rd in rrset])


@pytest.mark.parametrize("backend", ["memory", "etcd", "zookeeper"])
def test_a_partition_keeps_the_expired_endpoints(make_sdns: MakeSdns,
                                                 request: pytest.FixtureRequest,
                                                 backend: str) -> None:
    process = make_sdns(*backend_args(request, backend))
    with owners(process) as agents:
        assert _served(process) == COUNT
        agents.stopped = set(range(STOPPED))
        wait_until(lambda: process.api.get("/readyz").body["preserved"] == STOPPED, timeout=8)
        ready = process.api.get("/readyz").body
        assert ready["selfPreservation"] is True
        assert _served(process) == COUNT  # still served
        listed = process.api.get("/v1/services/shop/web/endpoints").body["endpoints"]
        assert sorted(e["id"] for e in listed if e.get("preserved")) == \
            sorted(f"e{i}" for i in range(STOPPED))
        assert "self-preservation" in process.output()
        # the owners come back: renewing is a 404, so they register again
        for i in range(STOPPED):
            assert process.api.post(f"/v1/leases/{agents.leases[i]}/renew").status == 404
            agents.register(i)
        agents.stopped = set()
        wait_until(lambda: process.api.get("/readyz").body["selfPreservation"] is False,
                   timeout=3)
        assert not any(e.get("preserved") for e in process.api.get(
            "/v1/services/shop/web/endpoints").body["endpoints"])
        # one owner gone is not a partition: it expires as always
        agents.stopped = {99}
        wait_until(lambda: _served(process) == COUNT - 1, timeout=TTL + 3)
        assert process.api.get("/readyz").body["preserved"] == 0


def test_a_preserved_endpoint_deleted_by_a_call_goes(make_sdns: MakeSdns, browser) -> None:
    process = make_sdns()
    with owners(process) as agents:
        agents.stopped = set(range(STOPPED))
        wait_until(lambda: process.api.get("/readyz").body["preserved"] == STOPPED, timeout=8)
        page = browser.new_page()  # the dashboard shows the banner
        try:
            page.goto(process.api.base + "/ui")
            page.wait_for_selector("#preservation:not([hidden])", timeout=5000)
            assert page.inner_text("#preservation") == \
                f"self-preservation: {STOPPED} expired endpoints kept"
        finally:
            page.close()
        assert process.api.delete("/v1/services/shop/web/endpoints/e0").status == 204
        assert process.api.get("/readyz").body["preserved"] == STOPPED - 1
        assert _served(process) == COUNT - 1


def test_with_self_preservation_off_they_go(make_sdns: MakeSdns) -> None:
    process = make_sdns("--self-preservation", "off")
    with owners(process) as agents:
        agents.stopped = set(range(STOPPED))
        wait_until(lambda: _served(process) == COUNT - STOPPED, timeout=TTL + 3)
        assert process.api.get("/readyz").body["selfPreservation"] is False


@pytest.mark.parametrize("backend", ["memory", "etcd", "zookeeper"])
def test_deleting_a_lease_by_a_call_is_not_an_expiry(make_sdns: MakeSdns,
                                                     request: pytest.FixtureRequest,
                                                     backend: str) -> None:
    process = make_sdns(*backend_args(request, backend))
    api = process.api
    api.put("/v1/services/shop/web", {"clusterIP": "None"})
    leases = [api.post("/v1/leases", {"ttl": 60}).body["id"] for _ in range(2)]
    reply = api.put("/v1/services/shop/web/endpoints", {"endpoints": [
        {"id": f"e{i}", "ip": f"10.251.0.{i + 1}", "lease": leases[i % 2]} for i in range(40)]})
    assert reply.status == 200, reply.body
    assert api.delete(f"/v1/leases/{leases[0]}").status == 204  # half of them, at once
    assert _served(process) == 20
    assert api.get("/readyz").body["preserved"] == 0


def test_kept_endpoints_go_after_the_maximum(make_sdns: MakeSdns) -> None:
    process = make_sdns("--self-preservation-max", "2")
    with owners(process) as agents:
        agents.stopped = set(range(STOPPED))
        wait_until(lambda: process.api.get("/readyz").body["preserved"] > 0, timeout=8)
        # checked every 5 s: gone within the maximum and one check
        wait_until(lambda: _served(process) == COUNT - STOPPED, timeout=2 + 5 + 3)
        assert process.api.get("/readyz").body["selfPreservation"] is False
