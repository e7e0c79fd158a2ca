"""A ZooKeeper replica reads many znodes to a request (multiRead, which kazoo lacks): the log as
it follows it, and the gets of one turn of its loop; on a real ZooKeeper."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from backends import zookeeper
from backends.zookeeper import ZooKeeperBackend
from sdns.errors import BackendUnavailable
from sdns.model import Event, Service, ServiceType
from tests.helpers.servers import ZooKeeper


async def test_a_replica_follows_group_commits_written_by_another(
        zookeeper_server: ZooKeeper) -> None:
    prefix = f"/sdns-reads-{uuid.uuid4().hex[:8]}"
    writer = ZooKeeperBackend([zookeeper_server.endpoint], prefix)
    follower = ZooKeeperBackend([zookeeper_server.endpoint], prefix)
    await writer.start()
    await follower.start()
    try:
        since = (await follower.snapshot()).revision + 1

        async def follow() -> list[Event]:
            events = []
            async for event in follower.watch(since):
                events.append(event)
                if len(events) == 150:
                    return events
            return events

        # following from before the writes: it meets entries not written yet, many at a time
        following = asyncio.create_task(follow())
        revisions = []
        for wave in range(3):
            revisions += await asyncio.gather(*(writer.put_service(Service(
                "reads", f"s{i}", ServiceType.EXTERNAL_NAME, external_name=f"h{i}.example"))
                for i in range(wave * 50, wave * 50 + 50)))
        assert sorted(revisions) == list(range(since, since + 150))
        async with asyncio.timeout(10):
            events = await following
        assert [e.revision for e in events] == sorted(revisions)
        by_revision = {r: f"s{i}" for i, r in enumerate(revisions)}
        assert [e.key.name for e in events] == [by_revision[e.revision] for e in events]
        # a snapshot reads them back many gets to a request, past one request's worth
        async with asyncio.timeout(10):
            listed = (await follower.snapshot()).services
        assert sorted((s.name, s.external_name) for s in listed) == sorted(
            (f"s{i}", f"h{i}.example") for i in range(150))
    finally:
        await writer.close()
        await follower.close()


async def test_a_zookeeper_without_multiread_is_refused_at_start_with_the_reason(
        zookeeper_server: ZooKeeper, monkeypatch: pytest.MonkeyPatch) -> None:
    # ZooKeeper before 3.6 answers the request as one it does not know: so does any version
    # to an opcode it lacks
    monkeypatch.setattr(zookeeper._Reads, "type", 999)
    store = ZooKeeperBackend([zookeeper_server.endpoint], f"/sdns-reads-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(BackendUnavailable, match=r"ZooKeeper 3\.6 or later"):
            await store.start()
    finally:
        await store.close()
