"""Read-your-writes, said honestly: a write the local view does not reach in time is reported
as stored but not yet visible, never as an ordinary success."""

from __future__ import annotations

import pytest

from backends.memory import MemoryBackend
from sdns.cluster_ip import ClusterIPRange
from sdns.errors import NotYetVisible
from sdns.model import ServiceKey
from sdns.registry import Registry
from sdns.watch import Watcher


async def test_a_write_the_view_has_not_reached_says_so() -> None:
    backend = MemoryBackend()
    watcher = Watcher(backend)  # not following the backend: its view stays behind
    registry = Registry(backend, watcher, ClusterIPRange("10.96.0.0/16"), visible_within=0.1)
    key = ServiceKey("default", "web")
    with pytest.raises(NotYetVisible) as raised:
        await registry.put_service(key, {})
    assert raised.value.status == 202
    assert raised.value.to_json()["revision"] == 1
    assert (await backend.get_service(key)) is not None  # stored all the same


async def test_a_write_the_view_reaches_returns_normally() -> None:
    backend = MemoryBackend()
    watcher = Watcher(backend)
    await watcher.start()
    try:
        registry = Registry(backend, watcher, ClusterIPRange("10.96.0.0/16"))
        service, created = await registry.put_service(ServiceKey("default", "web"), {})
        assert created
        assert registry.service(service.key) == service
    finally:
        await watcher.close()
