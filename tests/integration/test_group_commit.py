"""Concurrent registrations on the stores: committed together where the store allows it, yet
every acknowledged write is in the store and every refused one is refused alone."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.servers import backend_args
from tests.helpers.support import SdnsProcess, wait_until

MakeSdns = Callable[..., SdnsProcess]


@pytest.fixture(params=["etcd", "zookeeper"])
def shared(request: pytest.FixtureRequest) -> list[str]:
    return backend_args(request, request.param)


def test_concurrent_registrations_each_get_their_own_outcome(make_sdns: MakeSdns,
                                                             shared: list[str],
                                                             ns: str) -> None:
    writer, reader = make_sdns(*shared), make_sdns(*shared)
    for i in range(4):
        writer.api.put(f"/v1/services/{ns}/s{i}", {"ports": [{"name": "http", "port": 80}]})

    def register(i: int) -> int:
        body = {"ip": f"10.253.{i // 250}.{i % 250 + 1}"}
        if i == 77:
            body["lease"] = "deadbeef"  # no such lease: only this one fails
        return writer.api.put(f"/v1/services/{ns}/s{i % 4}/endpoints/e{i}", body).status

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(register, range(200)))
    assert statuses.count(201) == 199
    assert statuses[77] == 400

    def stored() -> set[str]:  # as the other replica, fed by the store, sees them
        return {e["id"] for i in range(4) for e in reader.api.get(
            f"/v1/services/{ns}/s{i}/endpoints").body["endpoints"]}

    wait_until(lambda: len(stored()) == 199, timeout=10)
    assert stored() == {f"e{i}" for i in range(200) if i != 77}
