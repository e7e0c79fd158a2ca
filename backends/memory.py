"""The embedded backend: everything in this process, nothing to set up, gone at exit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sdns.config import Config
from sdns.errors import NotFound
from sdns.model import Endpoint, Event, Lease, Service, ServiceKey
from sdns.store import ClusterIPTaken, Compacted, LeaseNotFound, ServiceExists, Snapshot

# Events kept for watchers that resume from an older revision.
HISTORY = 10_000


@dataclass(slots=True)
class _Lease:
    id: str
    ttl: int
    expires_at: float
    holders: set[tuple[ServiceKey, str]] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None

    def value(self) -> Lease:
        return Lease(self.id, self.ttl, self.expires_at, len(self.holders))


class MemoryBackend:
    def __init__(self) -> None:
        self._revision = 0
        self.expired = 0
        self._services: dict[ServiceKey, Service] = {}
        self._endpoints: dict[ServiceKey, dict[str, Endpoint]] = {}
        self._cluster_ips: dict[str, ServiceKey] = {}
        self._leases: dict[str, _Lease] = {}
        self._replicas: dict[str, float] = {}  # replica -> until when it is announced
        self._history: deque[Event] = deque(maxlen=HISTORY)
        self._watchers: set[asyncio.Queue[Event]] = set()

    @classmethod
    def from_config(cls, config: Config) -> MemoryBackend:
        return cls()

    async def start(self) -> None:
        pass

    async def ready(self) -> None:
        pass

    async def announce(self, replica: str, ttl: int) -> None:
        self._replicas[replica] = time.time() + ttl

    async def replicas(self) -> list[str]:
        now = time.time()
        return sorted(r for r, until in self._replicas.items() if until > now)

    async def close(self) -> None:
        for lease in self._leases.values():
            if lease.timer is not None:
                lease.timer.cancel()
        self._leases.clear()

    async def snapshot(self) -> Snapshot:
        return Snapshot(
            revision=self._revision,
            services=list(self._services.values()),
            endpoints={key: list(eps.values()) for key, eps in self._endpoints.items()},
        )

    async def watch(self, since: int) -> AsyncIterator[Event]:
        oldest = self._history[0].revision if self._history else self._revision + 1
        if since < oldest and since <= self._revision:
            raise Compacted(f"revision {since} is older than the oldest kept, {oldest}")
        queue: asyncio.Queue[Event] = asyncio.Queue()
        for event in self._history:
            if event.revision >= since:
                queue.put_nowait(event)
        self._watchers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)

    async def get_service(self, key: ServiceKey) -> Service | None:
        return self._services.get(key)

    async def get_endpoint(self, key: ServiceKey, endpoint_id: str) -> Endpoint | None:
        return self._endpoints.get(key, {}).get(endpoint_id)

    async def put_service(self, service: Service, *, create: bool = False) -> int:
        key = service.key
        old = self._services.get(key)
        if create and old is not None:
            raise ServiceExists(key)
        for ip in service.cluster_ips:
            if self._cluster_ips.get(ip, key) != key:
                raise ClusterIPTaken(ip)
        for ip in set(old.cluster_ips if old else ()) - set(service.cluster_ips):
            del self._cluster_ips[ip]
        for ip in service.cluster_ips:
            self._cluster_ips[ip] = key
        self._services[key] = service
        self._endpoints.setdefault(key, {})
        revision = self._next_revision()
        self._publish(Event(revision, "put", key, None, service))
        return revision

    async def delete_service(self, key: ServiceKey) -> int:
        service = self._services.pop(key, None)
        if service is None:
            raise NotFound(f"service {key} not found")
        for ip in service.cluster_ips:
            del self._cluster_ips[ip]
        revision = self._next_revision()
        for endpoint_id, endpoint in self._endpoints.pop(key, {}).items():
            self._release(key, endpoint)
            self._publish(Event(revision, "delete", key, endpoint_id))
        self._publish(Event(revision, "delete", key))
        return revision

    async def put_endpoint(self, key: ServiceKey, endpoint: Endpoint) -> int:
        endpoints = self._endpoints.get(key)
        if endpoints is None:
            raise NotFound(f"service {key} not found")
        if endpoint.lease is not None and endpoint.lease not in self._leases:
            raise LeaseNotFound(endpoint.lease)
        self._store(key, endpoints, endpoint)
        revision = self._next_revision()
        self._publish(Event(revision, "put", key, endpoint.id, endpoint))
        return revision

    async def put_endpoints(self, key: ServiceKey, endpoints: list[Endpoint]) -> int:
        current = self._endpoints.get(key)
        if current is None:
            raise NotFound(f"service {key} not found")
        for endpoint in endpoints:
            if endpoint.lease is not None and endpoint.lease not in self._leases:
                raise LeaseNotFound(endpoint.lease)
        if not endpoints and not current:
            return self._revision  # nothing to change: no revision of its own
        revision = self._next_revision()
        wanted = {e.id for e in endpoints}
        for endpoint_id in [i for i in current if i not in wanted]:
            self._release(key, current.pop(endpoint_id))
            self._publish(Event(revision, "delete", key, endpoint_id))
        for endpoint in endpoints:
            self._store(key, current, endpoint)
            self._publish(Event(revision, "put", key, endpoint.id, endpoint))
        return revision

    async def delete_endpoint(self, key: ServiceKey, endpoint_id: str) -> int:
        endpoint = self._endpoints.get(key, {}).pop(endpoint_id, None)
        if endpoint is None:
            raise NotFound(f"endpoint {endpoint_id} of service {key} not found")
        self._release(key, endpoint)
        revision = self._next_revision()
        self._publish(Event(revision, "delete", key, endpoint_id))
        return revision

    # Leases

    async def create_lease(self, ttl: int) -> Lease:
        lease = _Lease(uuid.uuid4().hex[:16], ttl, time.time() + ttl)
        self._leases[lease.id] = lease
        self._schedule(lease)
        return lease.value()

    async def renew_lease(self, lease_id: str) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise NotFound(f"lease {lease_id} not found (expired?)")
        lease.expires_at = time.time() + lease.ttl
        self._schedule(lease)
        return lease.value()

    async def get_lease(self, lease_id: str) -> Lease | None:
        lease = self._leases.get(lease_id)
        return None if lease is None else lease.value()

    async def delete_lease(self, lease_id: str) -> int:
        if lease_id not in self._leases:
            raise NotFound(f"lease {lease_id} not found")
        return self._end_lease(lease_id)

    def _schedule(self, lease: _Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
        delay = max(0.0, lease.expires_at - time.time())
        lease.timer = asyncio.get_running_loop().call_later(delay, self._expire, lease.id)

    def _expire(self, lease_id: str) -> None:
        self.expired += len(self._leases[lease_id].holders)
        self._end_lease(lease_id, expired=True)

    def _end_lease(self, lease_id: str, expired: bool = False) -> int:
        """Drop the lease and delete every endpoint it holds, in one revision."""
        lease = self._leases.pop(lease_id)
        if lease.timer is not None:
            lease.timer.cancel()
        if not lease.holders:
            return self._revision
        revision = self._next_revision()
        for key, endpoint_id in sorted(lease.holders):
            del self._endpoints[key][endpoint_id]
            self._publish(Event(revision, "delete", key, endpoint_id, expired=expired))
        return revision

    def _store(self, key: ServiceKey, endpoints: dict[str, Endpoint], endpoint: Endpoint
               ) -> None:
        """Put ``endpoint`` among its service's ``endpoints``, held by its lease (which
        exists) and no longer by the one of the endpoint it replaces."""
        old = endpoints.get(endpoint.id)
        if old is not None:
            self._release(key, old)
        endpoints[endpoint.id] = endpoint
        if endpoint.lease is not None:  # with the service's own key, not a copy per write
            self._leases[endpoint.lease].holders.add((self._services[key].key, endpoint.id))

    def _release(self, key: ServiceKey, endpoint: Endpoint) -> None:
        """``endpoint`` is going: its lease holds it no longer."""
        lease = None if endpoint.lease is None else self._leases.get(endpoint.lease)
        if lease is not None:
            lease.holders.discard((key, endpoint.id))

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    def _publish(self, event: Event) -> None:
        self._history.append(event)
        for queue in self._watchers:
            queue.put_nowait(event)
