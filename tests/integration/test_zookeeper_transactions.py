"""Writes near the size of one ZooKeeper transaction, which ZooKeeper caps at jute.maxbuffer
(1 MiB) by dropping the connection that sent a larger one; on a real ZooKeeper."""

from __future__ import annotations

import asyncio
import uuid

from backends.zookeeper import ZooKeeperBackend
from sdns.errors import Invalid
from sdns.model import Endpoint, Service
from tests.helpers.servers import ZooKeeper


def _leased(count: int, lease: str, expires_at: float) -> list[Endpoint]:
    return [Endpoint(f"e{i}", f"10.100.{i // 250}.{i % 250 + 1}", "", lease=lease,
                     expires_at=expires_at) for i in range(count)]


async def test_writes_about_a_transaction_large_are_stored_or_refused_on_one_session(
        zookeeper_server: ZooKeeper) -> None:
    store = ZooKeeperBackend([zookeeper_server.endpoint], f"/sdns-tx-{uuid.uuid4().hex[:8]}")
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
        # eighteen sets of 100 that come together: more than one transaction takes
        written = await asyncio.gather(*(store.put_endpoints(
            service.key, _leased(100, lease.id, lease.expires_at)) for service in services[4:]))
        assert len(set(written)) == 18
        assert store.zk.client_id == session
        stored = (await store.snapshot()).endpoints
        assert [len(stored[s.key]) for s in services[4:]] == [100] * 18
    finally:
        await store.close()
