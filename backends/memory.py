"""The embedded backend: everything in this process, nothing to set up, gone at exit."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace

from sdns.config import Config
from sdns.errors import NotFound
from sdns.model import Endpoint, Event, Service, ServiceKey
from sdns.store import ClusterIPTaken, Compacted, ServiceExists, Snapshot

# Events kept for watchers that resume from an older revision.
HISTORY = 10_000


class MemoryBackend:
    def __init__(self) -> None:
        self._revision = 0
        self._services: dict[ServiceKey, Service] = {}
        self._endpoints: dict[ServiceKey, dict[str, Endpoint]] = {}
        self._cluster_ips: dict[str, ServiceKey] = {}
        self._expiry: dict[tuple[ServiceKey, str], asyncio.TimerHandle] = {}
        self._history: deque[Event] = deque(maxlen=HISTORY)
        self._watchers: set[asyncio.Queue[Event]] = set()

    @classmethod
    def from_config(cls, config: Config) -> MemoryBackend:
        return cls()

    async def start(self) -> None:
        pass

    async def ready(self) -> None:
        pass

    async def close(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()

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
        for endpoint_id in self._endpoints.pop(key, {}):
            self._cancel_expiry(key, endpoint_id)
            self._publish(Event(revision, "delete", key, endpoint_id))
        self._publish(Event(revision, "delete", key))
        return revision

    async def put_endpoint(self, key: ServiceKey, endpoint: Endpoint) -> int:
        endpoints = self._endpoints.get(key)
        if endpoints is None:
            raise NotFound(f"service {key} not found")
        endpoints[endpoint.id] = endpoint
        self._schedule_expiry(key, endpoint)
        revision = self._next_revision()
        self._publish(Event(revision, "put", key, endpoint.id, endpoint))
        return revision

    async def renew_endpoint(self, key: ServiceKey, endpoint_id: str) -> tuple[int, Endpoint]:
        endpoint = self._endpoints.get(key, {}).get(endpoint_id)
        if endpoint is None:
            raise NotFound(f"endpoint {endpoint_id} of service {key} not found (expired?)")
        if endpoint.ttl == 0:
            return self._revision, endpoint
        renewed = replace(endpoint, expires_at=time.time() + endpoint.ttl)
        return await self.put_endpoint(key, renewed), renewed

    async def delete_endpoint(self, key: ServiceKey, endpoint_id: str) -> int:
        if self._endpoints.get(key, {}).pop(endpoint_id, None) is None:
            raise NotFound(f"endpoint {endpoint_id} of service {key} not found")
        self._cancel_expiry(key, endpoint_id)
        revision = self._next_revision()
        self._publish(Event(revision, "delete", key, endpoint_id))
        return revision

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    def _publish(self, event: Event) -> None:
        self._history.append(event)
        for queue in self._watchers:
            queue.put_nowait(event)

    def _schedule_expiry(self, key: ServiceKey, endpoint: Endpoint) -> None:
        self._cancel_expiry(key, endpoint.id)
        if endpoint.expires_at is None:
            return
        delay = max(0.0, endpoint.expires_at - time.time())
        loop = asyncio.get_running_loop()
        self._expiry[key, endpoint.id] = loop.call_later(delay, self._expire, key, endpoint.id)

    def _cancel_expiry(self, key: ServiceKey, endpoint_id: str) -> None:
        handle = self._expiry.pop((key, endpoint_id), None)
        if handle is not None:
            handle.cancel()

    def _expire(self, key: ServiceKey, endpoint_id: str) -> None:
        self._expiry.pop((key, endpoint_id), None)
        if self._endpoints.get(key, {}).pop(endpoint_id, None) is not None:
            self._publish(Event(self._next_revision(), "delete", key, endpoint_id))
