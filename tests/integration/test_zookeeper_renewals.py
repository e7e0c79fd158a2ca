"""Lease renewals on ZooKeeper linger for company and leave together as one multi
(backends/linger.py); on a real ZooKeeper."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from kazoo.client import KazooClient

from backends.linger import COMPANY, LINGER
from backends.zookeeper import ZooKeeperBackend
from sdns.errors import BackendUnavailable
from tests.helpers.servers import ZooKeeper


async def test_renewals_a_moment_apart_are_one_write_and_each_is_answered_once_stored(
        zookeeper_server: ZooKeeper) -> None:
    prefix = f"/sdns-renewals-{uuid.uuid4().hex[:8]}"
    store = ZooKeeperBackend([zookeeper_server.endpoint], prefix)
    await store.start()
    reader = KazooClient(hosts=zookeeper_server.endpoint)
    await asyncio.to_thread(reader.start)
    try:
        leases = [await store.create_lease(60) for _ in range(3 + COMPANY)]

        async def written(lease_id: str) -> tuple[float, int]:
            data, stat = await asyncio.to_thread(reader.get, f"{prefix}/leases/{lease_id}")
            return float(data.split(b'"expiresAt":')[1].rstrip(b"}")), stat.mzxid

        async def renew_later(lease_id: str, delay: float) -> tuple[float, float, int]:
            await asyncio.sleep(delay)
            expires_at = (await store.renew_lease(lease_id)).expires_at
            return (expires_at, *await written(lease_id))

        # three, each a quarter of LINGER after the one before: the first waits for the others
        started = time.monotonic()
        renewed = await asyncio.gather(*(renew_later(lease.id, i * LINGER / 4)
                                         for i, lease in enumerate(leases[:3])))
        assert time.monotonic() - started >= LINGER * 0.9
        assert [answered for answered, _, _ in renewed] == [at for _, at, _ in renewed]
        assert all(at > time.time() + 59 for _, at, _ in renewed)
        assert len({zxid for _, _, zxid in renewed}) == 1  # one transaction
        # COMPANY of them go as one multi too
        company = await asyncio.gather(*(renew_later(lease.id, 0) for lease in leases[3:]))
        assert len({zxid for _, _, zxid in company}) == 1
        assert company[0][2] > renewed[0][2]
    finally:
        await asyncio.to_thread(reader.stop)
        await store.close()


async def test_a_renewal_lingering_when_the_store_closes_hears_why(
        zookeeper_server: ZooKeeper) -> None:
    store = ZooKeeperBackend([zookeeper_server.endpoint], f"/sdns-renewals-{uuid.uuid4().hex[:8]}")
    await store.start()
    lease = await store.create_lease(60)
    lingering = asyncio.create_task(store.renew_lease(lease.id))
    await asyncio.sleep(0)  # it has come, and waits for company
    await store.close()
    with pytest.raises(BackendUnavailable, match="closing"):
        async with asyncio.timeout(5):
            await lingering
