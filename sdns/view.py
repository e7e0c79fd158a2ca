"""The view: the services and endpoints as last seen from the backend, indexed for lookups,
and what each change touched."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from sdns.model import Endpoint, Event, Service, ServiceKey
from sdns.store import Snapshot

Holder = tuple[ServiceKey, str | None]


@dataclass(frozen=True, slots=True)
class Change:
    """What one event touched: the service and every address it added or removed."""

    revision: int
    key: ServiceKey
    ips: frozenset[str]
    endpoint_id: str | None = None  # None when the event was the service's own


class View:
    """The services and endpoints as last seen from the backend, indexed for lookups.

    ``lock`` is held by whoever changes the view together with what is derived from it (the
    watcher, applying a change and telling its subscribers), and by another thread that
    derives something from the view and stores it (the UDP thread, caching a first answer),
    so that nothing derived from an older view is stored after the change that outdates it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
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
        self.held = 0  # endpoints held by a lease (or a ttl): what can expire
        self.checked: set[tuple[ServiceKey, str]] = set()  # endpoints with an active check

    def service(self, key: ServiceKey) -> Service | None:
        return self._services.get(key)

    def service_named(self, namespace: str, name: str) -> Service | None:
        """``service``, for the UDP thread: a ServiceKey equals its plain tuple, which costs
        less to make."""
        return self._services.get((namespace, name))

    def services(self) -> Iterable[Service]:
        return self._services.values()

    def endpoints(self, key: ServiceKey) -> list[Endpoint]:
        return sorted(self._endpoints.get(key, {}).values(), key=lambda e: e.id)

    def counts(self) -> tuple[int, int, int]:
        """How many services, ready endpoints and endpoints not ready the view holds."""
        ready = total = 0
        for endpoints in self._endpoints.values():
            total += len(endpoints)
            ready += sum(e.serving for e in endpoints.values())
        return len(self._services), ready, total - ready

    def endpoint(self, key: ServiceKey, endpoint_id: str) -> Endpoint | None:
        return self._endpoints.get(key, {}).get(endpoint_id)

    def ready_endpoints(self, key: ServiceKey) -> list[Endpoint]:
        """The endpoints clients are sent to: ready, and passing their check if any."""
        return [e for e in self.endpoints(key) if e.serving]

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
        service = self._services.get(event.key)
        # the service's own key object, not the one each write's path made: every endpoint
        # indexed by address holds its key, and a copy each costs some 170 bytes
        key = event.key if service is None else service.key
        if event.endpoint_id is None:
            ips = set(service.cluster_ips) if service else set()
            if isinstance(event.value, Service):
                self._put_service(event.value)
                ips.update(event.value.cluster_ips)
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
        return Change(event.revision, key, frozenset(ips), event.endpoint_id)

    def _put_service(self, service: Service) -> None:
        key = service.key
        old = self._services.get(key)
        if old is None:
            self._per_namespace[key.namespace] += 1
        else:
            for ip in old.cluster_ips:
                self._unindex(ip, key, None)
                self._cluster_ips.discard(ip)
        self._services[key] = service
        for ip in service.cluster_ips:
            self._index(ip, (key, None))
            self._cluster_ips.add(ip)

    def _delete_service(self, key: ServiceKey) -> None:
        service = self._services.pop(key, None)
        if service is None:
            return
        self._per_namespace[key.namespace] -= 1
        if not self._per_namespace[key.namespace]:
            del self._per_namespace[key.namespace]
        for ip in service.cluster_ips:
            self._unindex(ip, key, None)
            self._cluster_ips.discard(ip)
        for endpoint_id in list(self._endpoints.get(key, {})):
            self._delete_endpoint(key, endpoint_id)
        self._endpoints.pop(key, None)

    def _put_endpoint(self, key: ServiceKey, endpoint: Endpoint) -> None:
        endpoints = self._endpoints.setdefault(key, {})
        old = endpoints.get(endpoint.id)
        if old is not None:
            self._unindex(old.ip, key, old.id)
            self.held -= old.lease is not None
        endpoints[endpoint.id] = endpoint
        self._index(endpoint.ip, (key, endpoint.id))
        self.held += endpoint.lease is not None
        if endpoint.health is not None:
            self.checked.add((key, endpoint.id))
        elif old is not None and old.health is not None:
            self.checked.discard((key, endpoint.id))

    def _delete_endpoint(self, key: ServiceKey, endpoint_id: str) -> None:
        old = self._endpoints.get(key, {}).pop(endpoint_id, None)
        if old is not None:
            self._unindex(old.ip, key, endpoint_id)
            self.held -= old.lease is not None
            self.checked.discard((key, endpoint_id))

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
