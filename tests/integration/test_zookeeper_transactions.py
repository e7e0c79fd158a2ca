"""Writes near the size of one ZooKeeper transaction, which ZooKeeper caps at jute.maxbuffer
(1 MiB) by dropping the connection that sent a larger one; on a real ZooKeeper."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from backends import zookeeper
from backends.zookeeper import ZooKeeperBackend
from sdns.errors import Invalid
from sdns.model import Endpoint, Service
from tests.helpers.servers import ZooKeeper


def _leased(count: int, lease: str, expires_at: float) -> list[Endpoint]:
    return [Endpoint(f"e{i}", f"10.100.{i // 250}.{i % 250 + 1}", "", lease=lease,
                     expires_at=expires_at) for i in range(count)]


async def test_writes_about_a_transaction_large_are_stored_or_refused_on_one_session(
        zookeeper_server: ZooKeeper) -> None:
    prefix = f"/sdns-tx-{uuid.uuid4().hex[:8]}"
    store = ZooKeeperBackend([zookeeper_server.endpoint], prefix)
    await store.start()
    try:
        session = store.zk.client_id
        lease = await store.create_lease(600)
        services = [Service("tx", f"s{i}", cluster_ips=(f"10.96.0.{i + 1}",)) for i in range(22)]
        for service in services:
            await store.put_service(service)
        # one endpoint set each, 1,500 to 2,000 endpoints, written or refused as too large
        outcomes = []
        for count, service in zip((1500, 1600, 1800, 2000), services, strict=False):
            try:
                outcomes.append(await store.put_endpoints(
                    service.key, _leased(count, lease.id, lease.expires_at)))
            except Invalid as refused:
                assert refused.field == "endpoints"
                outcomes.append(None)
        assert outcomes[0] is not None and outcomes[-1] is None
        assert outcomes == sorted(outcomes, key=lambda o: o is None)  # refused from a size on
        # eighteen sets of 100 that come together: more than one transaction takes, fewer
        # than eighteen
        written = await asyncio.gather(*(store.put_endpoints(
            service.key, _leased(100, lease.id, lease.expires_at)) for service in services[4:]))
        assert len(set(written)) == 18
        logged = await asyncio.gather(*(asyncio.to_thread(
            store.zk.get, f"{prefix}/log/{revision:020d}") for revision in written))
        assert 1 < len({stat.czxid for _, stat in logged}) < 18
        assert store.zk.client_id == session
        stored = (await store.snapshot()).endpoints
        assert [len(stored[s.key]) for s in services[4:]] == [100] * 18
    finally:
        await store.close()


async def test_a_lease_holding_more_than_one_transaction_takes_still_expires(
        zookeeper_server: ZooKeeper) -> None:
    store = ZooKeeperBackend([zookeeper_server.endpoint], f"/sdns-tx-{uuid.uuid4().hex[:8]}")
    await store.start()
    try:
        lease = await store.create_lease(4)
        services = [Service("tx", f"s{i}", cluster_ips=(f"10.96.1.{i + 1}",)) for i in range(4)]
        for service in services:  # 6,000 endpoints: about 1.4 MB of deletes and events
            await store.put_service(service)
            await store.put_endpoints(service.key, _leased(1500, lease.id, lease.expires_at))
        await store.renew_lease(lease.id)
        since = (await store.snapshot()).revision
        async with asyncio.timeout(30):
            while (await store.snapshot()).endpoints:
                await asyncio.sleep(0.2)
        assert await store.get_lease(lease.id) is None
        assert store.expired == 6000
        assert (await store.snapshot()).revision - since == 6  # a thousand to a revision
    finally:
        await store.close()


async def test_a_service_deleted_past_a_revision_of_removals_goes_in_several(
        zookeeper_server: ZooKeeper, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zookeeper, "REMOVALS", 10)
    store = ZooKeeperBackend([zookeeper_server.endpoint], f"/sdns-tx-{uuid.uuid4().hex[:8]}")
    await store.start()
    try:
        lease = await store.create_lease(600)
        service = Service("tx", "wide", cluster_ips=("10.96.2.1",))
        await store.put_service(service)
        await store.put_endpoints(service.key, _leased(25, lease.id, lease.expires_at))
        since = (await store.snapshot()).revision
        events = []

        async def follow() -> None:
            async for event in store.watch(since + 1):
                events.append(event)
                if event.endpoint_id is None:
                    return

        following = asyncio.create_task(follow())
        revision = await store.delete_service(service.key)
        async with asyncio.timeout(10):
            await following
        assert revision == since + 3
        assert sorted(e.endpoint_id for e in events[:-1]) == sorted(f"e{i}" for i in range(25))
        assert [e.revision for e in events] == sorted(e.revision for e in events)
        assert (events[-1].key, events[-1].revision) == (service.key, since + 3)
        assert (await store.get_lease(lease.id)).endpoints == 0
        assert not (await store.snapshot()).services
    finally:
        await store.close()
