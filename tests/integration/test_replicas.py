"""Replicas announce themselves in the store: each sees the others in /v1/status, one that
stops leaves at once, and staying announced writes nothing anyone watches."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.helpers.servers import backend_args
from tests.helpers.support import SdnsProcess, wait_until

MakeSdns = Callable[..., SdnsProcess]


@pytest.mark.parametrize("backend", ["etcd", "zookeeper"])
def test_replicas_see_each_other_and_a_stopped_one_leaves(
        make_sdns: MakeSdns, request: pytest.FixtureRequest, backend: str) -> None:
    shared = backend_args(request, backend)
    a, b = make_sdns(*shared), make_sdns(*shared)
    names = sorted(f"127.0.0.1:{p.api_port}" for p in (a, b))
    wait_until(lambda: a.api.get("/v1/status").body["replicas"] == names, timeout=5)
    assert b.api.get("/v1/status").body["replica"] == f"127.0.0.1:{b.api_port}"
    revision = a.api.get("/readyz").body["revision"]
    time.sleep(4)  # past one renewal of the presence (every 10/3 s)
    assert a.api.get("/readyz").body["revision"] == revision  # nothing watched changed
    b.stop()
    wait_until(lambda: a.api.get("/v1/status").body["replicas"] == [f"127.0.0.1:{a.api_port}"],
               timeout=3)


def test_the_memory_backend_has_one_replica(make_sdns: MakeSdns) -> None:
    process = make_sdns()
    status = process.api.get("/v1/status").body
    assert status["replicas"] == [status["replica"]] == [f"127.0.0.1:{process.api_port}"]
    assert (status["backend"], status["store"]) == ("memory", "up")
