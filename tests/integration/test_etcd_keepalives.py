"""etcd lease renewals over their own HTTP/2 stream (backends/keepalives.py), on a real etcd:
far past HTTP/2's first flow-control windows, and through an outage of etcd."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from backends.etcd import EtcdBackend
from sdns.errors import BackendUnavailable, NotFound
from tests.helpers.servers import Etcd, running


@pytest.fixture
def own_etcd() -> Iterator[Etcd]:
    """An etcd of this test's own, which it may kill and restart."""
    with running(Etcd) as server:
        yield server


async def _store(endpoint: str) -> EtcdBackend:
    store = EtcdBackend([endpoint], f"/sdns-keepalives-{uuid.uuid4().hex[:8]}")
    await store.start()
    return store


async def test_renewals_flow_past_the_first_windows_each_with_its_own_answer(
        etcd_server: Etcd) -> None:
    # 8,000 keepalives of about 15 bytes, and replies of about 35: each way more than the
    # 65,535 bytes HTTP/2 lets through before the other side opens the window again
    store = await _store(etcd_server.endpoint)
    try:
        leases = [await store.create_lease(30 + i) for i in range(4)]
        gone = await store.create_lease(30)
        await store.delete_lease(gone.id)
        for _ in range(16):
            renewed = await asyncio.gather(
                *(store.renew_lease(leases[i % 4].id) for i in range(496)),
                *(store.renew_lease(gone.id) for _ in range(4)), return_exceptions=True)
            assert [r.ttl for r in renewed[:496]] == [30 + i % 4 for i in range(496)]
            assert all(isinstance(r, NotFound) for r in renewed[496:])
    finally:
        await store.close()


async def test_renewals_fail_fast_while_etcd_is_down_and_work_once_it_is_back(
        own_etcd: Etcd) -> None:
    store = await _store(own_etcd.endpoint)
    try:
        lease = await store.create_lease(60)
        await store.renew_lease(lease.id)
        own_etcd.kill()
        asked = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await store.renew_lease(lease.id)
        with pytest.raises(BackendUnavailable):  # and the next opens no stream either
            await store.renew_lease(lease.id)
        assert time.monotonic() - asked < 2
        own_etcd.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                renewed = await store.renew_lease(lease.id)
                break
            except BackendUnavailable:
                assert time.monotonic() < deadline, "no renewal within 20 s of etcd's return"
                await asyncio.sleep(0.1)
        assert renewed.ttl == 60
        assert renewed.expires_at > time.time() + 58
    finally:
        await store.close()
