"""What each store refuses inside its own transaction, where no read beforehand can see it:
the conflict comes back as the error it is, not as a retry that ends in 503."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from sdns.config import Config
from sdns.model import Endpoint, Service, ServiceKey
from sdns.store import Backend, LeaseNotFound, create


@pytest.fixture(params=["memory", "etcd", "zookeeper"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    prefix = f"/sdns-conflicts-{uuid.uuid4().hex[:8]}"
    if request.param == "etcd":
        config = Config(backend="etcd", prefix=prefix, etcd_endpoints=(
            request.getfixturevalue("etcd_server").endpoint,))
    elif request.param == "zookeeper":
        config = Config(backend="zookeeper", prefix=prefix, zk_hosts=(
            request.getfixturevalue("zookeeper_server").endpoint,))
    else:
        config = Config()
    store = create(config)
    await store.start()
    yield store
    await store.close()


async def test_an_endpoint_naming_a_lease_that_is_gone_is_refused(backend: Backend) -> None:
    key = ServiceKey("default", "web")
    await backend.put_service(Service("default", "web"))
    lease = await backend.create_lease(30)
    await backend.delete_lease(lease.id)
    with pytest.raises(LeaseNotFound):
        await backend.put_endpoint(key, Endpoint("e1", "10.0.0.1", "e1", lease=lease.id))
    with pytest.raises(LeaseNotFound):
        await backend.put_endpoints(key, [Endpoint("e2", "10.0.0.2", "e2", lease=lease.id)])
    assert (await backend.snapshot()).endpoints.get(key, []) == []
