"""The watcher: one ordered stream of backend events applied to a local view, then told to
subscribers (the DNS answer cache, later the balancer)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import itertools
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from sdns.errors import BackendUnavailable, Gone
from sdns.model import Endpoint, Event, Service, ServiceKey, ServiceType
from sdns.store import Backend, Compacted, Snapshot
from sdns.tasks import cancel

log = logging.getLogger(__name__)


Holder = tuple[ServiceKey, str | None]


@dataclass(frozen=True, slots=True)
class Change:
    """What one event touched: the service and every address it added or removed."""

    revision: int
    key: ServiceKey
    ips: frozenset[str]


class Subscriber(Protocol):
    def changed(self, change: Change) -> None: ...

    def reloaded(self) -> None:
        """The whole view was replaced; forget everything derived from it."""
        ...


class View:
    """The services and endpoints as last seen from the backend, indexed for lookups."""

    def __init__(self) -> None:
        self._reset(0)

    def _reset(self, revision: int) -> None:
        self.revision = revision
        self._services: dict[ServiceKey, Service] = {}
        self._endpoints: dict[ServiceKey, dict[str, Endpoint]] = {}
        self._per_namespace: Counter[str] = Counter()
        # address → the (service, endpoint id or None for the clusterIP) holding it; a set only
        # when several do, as one holder is the rule and a set per address costs 200 bytes
        self._by_ip: dict[str, Holder | set[Holder]] = {}
        self._cluster_ips: set[str] = set()

    def service(self, key: ServiceKey) -> Service | None:
        return self._services.get(key)

    def services(self) -> Iterable[Service]:
        return self._services.values()

    def endpoints(self, key: ServiceKey) -> list[Endpoint]:
        return sorted(self._endpoints.get(key, {}).values(), key=lambda e: e.id)

    def endpoint(self, key: ServiceKey, endpoint_id: str) -> Endpoint | None:
        return self._endpoints.get(key, {}).get(endpoint_id)

    def ready_endpoints(self, key: ServiceKey) -> list[Endpoint]:
        return [e for e in self.endpoints(key) if e.ready]

    def has_namespace(self, namespace: str) -> bool:
        return self._per_namespace[namespace] > 0

    def cluster_ips(self) -> set[str]:
        return self._cluster_ips

    def holders(self, ip: str) -> set[Holder]:
        found = self._by_ip.get(ip)
        if found is None:
            return set()
        return found if isinstance(found, set) else {found}

    def load(self, snapshot: Snapshot) -> None:
        self._reset(snapshot.revision)
        for service in snapshot.services:
            self._put_service(service)
        for key, endpoints in snapshot.endpoints.items():
            service = self._services.get(key)
            key = key if service is None else service.key  # one key object per service
            for endpoint in endpoints:
                self._put_endpoint(key, endpoint)

    def apply(self, event: Event) -> Change:
        self.revision = event.revision
        key = event.key
        if event.endpoint_id is None:
            old_service = self._services.get(key)
            ips = {old_service.cluster_ip} if old_service and old_service.cluster_ip else set()
            if isinstance(event.value, Service):
                self._put_service(event.value)
                ips.add(event.value.cluster_ip or "")
            else:
                self._delete_service(key)
        else:
            old = self._endpoints.get(key, {}).get(event.endpoint_id)
            ips = {old.ip} if old else set()
            if isinstance(event.value, Endpoint):
                self._put_endpoint(key, event.value)
                ips.add(event.value.ip)
            else:
                self._delete_endpoint(key, event.endpoint_id)
        ips.discard("")
        return Change(event.revision, key, frozenset(ips))

    def _put_service(self, service: Service) -> None:
        key = service.key
        old = self._services.get(key)
        if old is None:
            self._per_namespace[key.namespace] += 1
        elif old.cluster_ip is not None:
            self._unindex(old.cluster_ip, key, None)
            self._cluster_ips.discard(old.cluster_ip)
        self._services[key] = service
        if service.type is ServiceType.CLUSTER_IP and service.cluster_ip is not None:
            self._index(service.cluster_ip, (key, None))
            self._cluster_ips.add(service.cluster_ip)

    def _delete_service(self, key: ServiceKey) -> None:
        service = self._services.pop(key, None)
        if service is None:
            return
        self._per_namespace[key.namespace] -= 1
        if not self._per_namespace[key.namespace]:
            del self._per_namespace[key.namespace]
        if service.cluster_ip is not None:
            self._unindex(service.cluster_ip, key, None)
            self._cluster_ips.discard(service.cluster_ip)
        for endpoint_id in list(self._endpoints.get(key, {})):
            self._delete_endpoint(key, endpoint_id)
        self._endpoints.pop(key, None)

    def _put_endpoint(self, key: ServiceKey, endpoint: Endpoint) -> None:
        endpoints = self._endpoints.setdefault(key, {})
        old = endpoints.get(endpoint.id)
        if old is not None:
            self._unindex(old.ip, key, old.id)
        endpoints[endpoint.id] = endpoint
        self._index(endpoint.ip, (key, endpoint.id))

    def _delete_endpoint(self, key: ServiceKey, endpoint_id: str) -> None:
        old = self._endpoints.get(key, {}).pop(endpoint_id, None)
        if old is not None:
            self._unindex(old.ip, key, endpoint_id)

    def _index(self, ip: str, holder: Holder) -> None:
        found = self._by_ip.get(ip)
        if found is None or found == holder:
            self._by_ip[ip] = holder
        elif isinstance(found, set):
            found.add(holder)
        else:
            self._by_ip[ip] = {found, holder}

    def _unindex(self, ip: str, key: ServiceKey, endpoint_id: str | None) -> None:
        found = self._by_ip.get(ip)
        holder = (key, endpoint_id)
        if found == holder:
            del self._by_ip[ip]
        elif isinstance(found, set):
            found.discard(holder)
            if len(found) == 1:
                self._by_ip[ip] = found.pop()


@contextlib.contextmanager
def _bulk_load() -> Iterator[None]:
    """Reading a whole store makes millions of objects that live on. The cycle collector
    would scan them again and again as they arrive (a third of a start from 100,000 services),
    so it pauses; afterwards they are moved out of its reach (``gc.freeze``). The model holds
    no cycles, so reference counting still frees what a later change drops."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


# Events kept for watch streams that resume, and how far one stream may fall behind.
HISTORY = 10_000
STREAM_BACKLOG = 10_000


class Watcher:
    """Follows the backend from a snapshot on, keeping ``view`` current, and hands the same
    events to watch streams (``stream``)."""

    RETRY_SECONDS = 0.5

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.view = View()
        self.healthy = False
        self._subscribers: list[Subscriber] = []
        self._history: deque[Event] = deque(maxlen=HISTORY)
        self._history_floor = 0  # every event after this revision is in _history
        self._streams: set[asyncio.Queue[Event | None]] = set()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tiebreak = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def start(self) -> None:
        with _bulk_load():
            self._load(await self.backend.snapshot())
        self._task = asyncio.create_task(self._follow(), name="watcher")

    def end_streams(self) -> None:
        """End every watch stream, so that readers go (at shutdown)."""
        for queue in self._streams:
            _end(queue)

    async def close(self) -> None:
        if self._task is not None:
            await cancel(self._task)

    async def caught_up(self, revision: int, timeout: float = 2.0) -> bool:
        """Wait until the view reflects ``revision``; False when that took too long."""
        if self.view.revision >= revision:
            return True
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, next(self._tiebreak), future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    def stream(self, since: int | None = None) -> AsyncIterator[Event]:
        """Every event after ``since - 1`` (from now on when None), in order. Raises ``Gone``
        at once when that history is no longer kept; the stream ends when this watcher had to
        reload or the reader fell too far behind, and the reader resumes from its last
        revision."""
        if since is None:
            since = self.view.revision + 1
        if self._history_floor > 0 and since <= self._history_floor:
            raise Gone(f"events before revision {self._history_floor + 1} are no longer kept; "
                       "list the services again and watch from their revision", "since")
        queue: asyncio.Queue[Event | None] = asyncio.Queue(STREAM_BACKLOG)
        for event in self._history:
            if event.revision >= since:
                queue.put_nowait(event)
        self._streams.add(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[Event | None]) -> AsyncIterator[Event]:
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._streams.discard(queue)

    async def _follow(self) -> None:
        while True:
            try:
                await self._follow_once()
            except Compacted:
                log.warning("watch history was compacted; reloading from the backend")
                await self._reload()
            except BackendUnavailable as error:
                if self.healthy:
                    log.warning("lost the backend (%s); serving the last known data and "
                                "retrying", error.reason)
                self.healthy = False
                await asyncio.sleep(self.RETRY_SECONDS)

    async def _follow_once(self) -> None:
        events = self.backend.watch(self.view.revision + 1)
        if not self.healthy:
            await self.backend.ready()
            log.info("following the backend from revision %d", self.view.revision + 1)
            self.healthy = True
        async for event in events:
            self._apply(event)

    async def _reload(self) -> None:
        """After compaction: read the whole store again, and hand on the difference as events,
        so subscribers and watch streams see what changed meanwhile, once."""
        try:
            with _bulk_load():
                snapshot = await self.backend.snapshot()
        except BackendUnavailable as error:
            log.warning("reload failed (%s); retrying", error.reason)
            await asyncio.sleep(self.RETRY_SECONDS)
            return
        events = differences(self.view, snapshot)
        log.info("reloaded at revision %d: %d changes since revision %d", snapshot.revision,
                 len(events), self.view.revision)
        for event in events:
            self._apply(event)
        self.view.revision = snapshot.revision
        self.healthy = True
        self._wake()

    def _load(self, snapshot: Snapshot) -> None:
        self.view.load(snapshot)
        self.healthy = True
        self._history_floor = snapshot.revision
        for subscriber in self._subscribers:
            subscriber.reloaded()
        self._wake()

    def _apply(self, event: Event) -> None:
        change = self.view.apply(event)
        for subscriber in self._subscribers:
            subscriber.changed(change)
        if len(self._history) == self._history.maxlen:
            self._history_floor = self._history[0].revision
        self._history.append(event)
        for queue in list(self._streams):
            if queue.full():
                _end(queue)
            else:
                queue.put_nowait(event)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.view.revision:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)


def differences(view: View, snapshot: Snapshot) -> list[Event]:
    """Events that take ``view`` to ``snapshot``, all at the snapshot's revision: a service
    before its endpoints when it appears, after them when it goes."""
    revision = snapshot.revision
    services = {s.key: s for s in snapshot.services}
    endpoints = {key: {e.id: e for e in found} for key, found in snapshot.endpoints.items()}
    events: list[Event] = []
    for service in list(view.services()):
        if service.key not in services:
            events += [Event(revision, "delete", service.key, e.id)
                       for e in view.endpoints(service.key)]
            events.append(Event(revision, "delete", service.key))
    for key, service in services.items():
        if view.service(key) != service:
            events.append(Event(revision, "put", key, None, service))
        old = {e.id: e for e in view.endpoints(key)}
        new = endpoints.get(key, {})
        events += [Event(revision, "delete", key, i) for i in old if i not in new]
        events += [Event(revision, "put", key, i, e) for i, e in new.items() if old.get(i) != e]
    return events


def _end(queue: asyncio.Queue[Event | None]) -> None:
    """End the stream reading ``queue`` now. What it had not delivered is dropped: the reader
    resumes from the last revision it saw."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)
