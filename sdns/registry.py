"""Registration: validates requests, allocates clusterIPs, stamps TTL deadlines, and writes
through the backend. Reads come from the watcher's view, which every write waits for, so a
client sees its own write in the API and in DNS as soon as the write returns. A write the view
does not reach within ``visible_within`` seconds answers ``NotYetVisible`` (HTTP 202) instead
of claiming what did not happen."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from sdns import metrics, validation
from sdns.cluster_ip import ClusterIPRange, ClusterIPRanges
from sdns.errors import BackendUnavailable, Conflict, Invalid, NotFound, NotYetVisible
from sdns.model import (
    Endpoint,
    Event,
    Health,
    IPFamily,
    IPFamilyPolicy,
    Lease,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
    families,
    ip_family,
    shared_ports,
)
from sdns.store import Backend, ClusterIPTaken, LeaseNotFound, ServiceExists
from sdns.validation import EndpointRequest
from sdns.watch import Watcher

# A chosen free address can be claimed by another replica first; then pick again.
ALLOCATION_TRIES = 16
# How long a write waits for this replica's view to hold it: a client's request timeout is
# commonly 10 s or more, and a healthy store delivers in milliseconds.
VISIBLE_WITHIN = 5.0

class Registry:
    def __init__(self, backend: Backend, watcher: Watcher, cluster_ips: ClusterIPRanges,
                 visible_within: float = VISIBLE_WITHIN,
                 deregister_after: int | None = None) -> None:
        # seconds a checked endpoint may stay critical before it is deleted, unless it says
        self.deregister_after = deregister_after
        self.backend = backend
        self.watcher = watcher
        self.cluster_ips = cluster_ips
        self.visible_within = visible_within

    # Reads

    def services(self, namespace: str | None = None) -> list[Service]:
        found = (s for s in self.watcher.view.services()
                 if namespace is None or s.namespace == namespace)
        return sorted(found, key=lambda s: s.key)

    def service(self, key: ServiceKey) -> Service:
        service = self.watcher.view.service(key)
        if service is None:
            raise NotFound(f"service {key} not found")
        return service

    async def endpoints(self, key: ServiceKey) -> list[Endpoint]:
        """The endpoints of a service, with the deadlines their leases have now: a renewal
        changes no stored endpoint, so the view holds the deadline of the last write."""
        self.service(key)
        endpoints = self.watcher.view.endpoints(key)
        held = sorted({e.lease for e in endpoints if e.lease is not None})
        found = await asyncio.gather(*(self.backend.get_lease(i) for i in held))
        deadlines = {lease.id: lease.expires_at for lease in found if lease is not None}
        return [e if e.lease not in deadlines else replace(e, expires_at=deadlines[e.lease])
                for e in endpoints]

    async def replicas(self) -> list[str]:
        """The replicas serving from the store (``BackendUnavailable`` in an outage)."""
        return await self.backend.replicas()

    def preserved(self, key: ServiceKey) -> set[str]:
        """The ids of the service's endpoints kept by self-preservation."""
        preservation = self.watcher.preservation
        if preservation is None:
            return set()
        return {i for k, i in preservation.preserved if k == key}

    @property
    def preserving(self) -> int:
        """How many endpoints self-preservation keeps now."""
        preservation = self.watcher.preservation
        return 0 if preservation is None else len(preservation.preserved)

    @property
    def store_up(self) -> bool:
        """Whether the watcher follows the store now (else DNS serves the last known data)."""
        return self.watcher.healthy

    def all_endpoints(self, namespace: str | None = None
                      ) -> list[tuple[ServiceKey, Endpoint]]:
        """Every endpoint of the view with its service, for a whole picture in one call; the
        deadlines are those of the last write (``endpoints`` reads the leases' current ones)."""
        return [(s.key, e) for s in self.services(namespace)
                for e in self.watcher.view.endpoints(s.key)]

    @property
    def revision(self) -> int:
        """The backend revision the reads reflect."""
        return self.watcher.view.revision

    def changes(self, since: int | None) -> AsyncIterator[Event]:
        return self.watcher.stream(since)

    async def ready(self) -> None:
        """Return when the backend answers; ``BackendUnavailable`` when it does not."""
        await self.backend.ready()

    # Writes

    async def put_service(self, key: ServiceKey, body: Any) -> tuple[Service, bool]:
        """Create or replace a service; answers the stored service and whether it is new."""
        requested = validation.service(key, body)
        old = await self.backend.get_service(key)
        return await self._store(requested, old), old is None

    async def delete_service(self, key: ServiceKey) -> None:
        await self._settle(await self.backend.delete_service(key), "service", "delete")

    async def put_endpoint(self, key: ServiceKey, endpoint_id: str,
                           body: Any) -> tuple[Endpoint, bool]:
        """Register or replace an endpoint, creating its service when there is none. With a
        ttl the endpoint gets a lease of its own, which a heartbeat renews."""
        request = validation.endpoint(endpoint_id, body)
        self._check_ports_first(key, [request], in_set=False)
        service, _ = await self._service_for(key, request.ports)
        endpoint = (await self._endpoints_of(service, [request]))[0]
        old = self.watcher.view.endpoint(key, request.id)
        try:
            revision = await self.backend.put_endpoint(key, endpoint)
        except BaseException:
            await self._drop_own_leases([endpoint])
            raise
        if old is not None and old.lease != endpoint.lease:
            await self._drop_own_leases([old])  # it holds nothing now
        await self._settle(revision, "endpoint", "put")
        return endpoint, old is None

    async def put_endpoints(self, key: ServiceKey, body: Any
                            ) -> tuple[int, list[Endpoint], bool]:
        """Replace a service's whole endpoint set in one revision (what a scheduler sends
        after a rollout), creating the service when there is none: (revision, endpoints,
        whether the service is new)."""
        requests = validation.endpoint_set(body)
        self._check_ports_first(key, requests, in_set=True)
        named = {name: port for r in requests for name, port in r.ports.items()}
        service, created = await self._service_for(key, named)
        endpoints = await self._endpoints_of(service, requests, in_set=True)
        before = self.watcher.view.endpoints(key)
        try:
            revision = await self.backend.put_endpoints(key, endpoints)
        except BaseException:
            await self._drop_own_leases(endpoints)
            raise
        kept = {e.lease for e in endpoints}
        await self._drop_own_leases([e for e in before if e.lease not in kept])
        await self._settle(revision, "endpoint_set", "put")
        return revision, endpoints, created

    async def _service_for(self, key: ServiceKey, ports: dict[str, int]
                           ) -> tuple[Service, bool]:
        """The service endpoints are registered for, created with ``ports`` when there is
        none: (service, whether it is new)."""
        # The local view spares a round trip; the backend still refuses the write atomically
        # when the service is gone.
        service = self.watcher.view.service(key) or await self.backend.get_service(key)
        created = service is None
        if service is None:
            service = await self._create_for_endpoint(key, ports)
        if service.type is ServiceType.EXTERNAL_NAME:
            raise Conflict(f"service {key} is an ExternalName service; it has no endpoints",
                           "type")
        return service, created

    async def _endpoints_of(self, service: Service, requests: list[EndpointRequest],
                            in_set: bool = False) -> list[Endpoint]:
        """The endpoints to store for ``requests``: ports completed from the service, and
        each with its lease (a new one of its own for a ttl). Errors name an item of a set
        by its index."""
        for i, request in enumerate(requests):
            for name in request.ports:
                if service.port(name) is None:
                    field = f"endpoints[{i}].ports.{name}" if in_set else f"ports.{name}"
                    raise Invalid(f"service {service.key} has no port named {name!r}", field)
        named = sorted({r.lease for r in requests if r.lease is not None})
        found = await asyncio.gather(*(self.backend.get_lease(i) for i in named))
        leases = {lease.id: lease for lease in found if lease is not None}
        for i, request in enumerate(requests):
            if request.lease is not None and request.lease not in leases:
                missing = LeaseNotFound(request.lease)
                if in_set:
                    missing.field = f"endpoints[{i}].lease"
                raise missing
        endpoints = []
        try:
            for request in requests:
                ports = {p.name: p.target for p in service.ports} | request.ports
                health = self._health(service.key, request)
                lease = (await self.backend.create_lease(request.ttl) if request.ttl
                         else None if request.lease is None else leases[request.lease])
                endpoints.append(Endpoint(
                    id=request.id,
                    ip=request.ip,
                    hostname=request.hostname,
                    ports=shared_ports(tuple(sorted(ports.items()))),
                    ready=request.ready,
                    ttl=request.ttl,
                    expires_at=None if lease is None else lease.expires_at,
                    lease=None if lease is None else lease.id,
                    health=health,
                ))
        except BaseException:
            await self._drop_own_leases(endpoints)
            raise
        return endpoints

    def _check_ports_first(self, key: ServiceKey, requests: list[EndpointRequest],
                           in_set: bool) -> None:
        """Refuse a check at a port the endpoint will not have before anything is written
        (the service is created with the endpoint's own ports when there is none)."""
        service = self.watcher.view.service(key)
        for i, request in enumerate(requests):
            ports = {p.name: p.target for p in service.ports} if service else {}
            _check_port(request, ports | request.ports, f"endpoints[{i}]." if in_set else "")

    def _health(self, key: ServiceKey, request: EndpointRequest) -> Health | None:
        """The health an endpoint is stored with: what it had, when it is registered again
        with the same address and check; else not checked yet. (Its port was checked by
        ``_check_ports_first``: the ports only grow once the service is found.)"""
        check = request.check
        if check is None:
            return None
        deregister_after = request.deregister_after or self.deregister_after
        old = self.watcher.view.endpoint(key, request.id)
        if old is not None and old.health is not None and old.health.check == check and \
                old.ip == request.ip:
            return replace(old.health, deregister_after=deregister_after)
        return Health(check, since=time.time(), deregister_after=deregister_after)

    async def heartbeat(self, key: ServiceKey, endpoint_id: str) -> Endpoint:
        """Renew the lease that holds the endpoint: nothing anyone watches changes."""
        # registered through another replica a moment ago, it may not be in this view yet
        endpoint = self.watcher.view.endpoint(key, endpoint_id) or \
            await self.backend.get_endpoint(key, endpoint_id)
        if endpoint is None:
            raise NotFound(f"endpoint {endpoint_id} of service {key} not found (expired?)")
        if endpoint.lease is None:
            return endpoint  # it never expires
        try:
            lease = await self.backend.renew_lease(endpoint.lease)
        except NotFound:
            raise NotFound(f"endpoint {endpoint_id} of service {key} has expired") from None
        metrics.WRITES.labels("endpoint", "heartbeat").inc()
        return replace(endpoint, expires_at=lease.expires_at)

    async def record_health(self, key: ServiceKey, endpoint: Endpoint) -> None:
        """Store a change of the endpoint's health status (the checker's only write)."""
        await self._settle(await self.backend.put_endpoint(key, endpoint), "endpoint", "health")

    async def delete_endpoint(self, key: ServiceKey, endpoint_id: str) -> None:
        old = self.watcher.view.endpoint(key, endpoint_id)
        if old is not None and self.watcher.is_preserved(key, endpoint_id):
            # kept by self-preservation, gone from the store: put it back without its lease
            # first, so that the delete reaches every replica's view
            await self.backend.put_endpoint(key, replace(old, lease=None, ttl=0,
                                                         expires_at=None))
            old = None
        await self._settle(await self.backend.delete_endpoint(key, endpoint_id), "endpoint",
                           "delete")
        if old is not None:
            await self._drop_own_leases([old])

    async def _drop_own_leases(self, endpoints: list[Endpoint]) -> None:
        """The leases made for these endpoints' ttls, which hold them no longer; one that
        cannot be deleted expires by itself within its ttl."""
        for endpoint in endpoints:
            if endpoint.ttl and endpoint.lease is not None:
                with contextlib.suppress(NotFound, BackendUnavailable):
                    await self.backend.delete_lease(endpoint.lease)

    # Leases

    async def create_lease(self, body: Any) -> Lease:
        lease = await self.backend.create_lease(validation.lease_ttl(body))
        metrics.WRITES.labels("lease", "create").inc()
        return lease

    async def renew_lease(self, lease_id: str) -> Lease:
        lease = await self.backend.renew_lease(lease_id)
        metrics.WRITES.labels("lease", "renew").inc()
        return lease

    async def lease(self, lease_id: str) -> Lease:
        lease = await self.backend.get_lease(lease_id)
        if lease is None:
            raise NotFound(f"lease {lease_id} not found (expired?)")
        return lease

    async def delete_lease(self, lease_id: str) -> None:
        await self._settle(await self.backend.delete_lease(lease_id), "lease", "delete")

    async def _create_for_endpoint(self, key: ServiceKey, ports: dict[str, int]) -> Service:
        """The one-call path: a ClusterIP service whose ports are the endpoint's."""
        service = Service(
            namespace=key.namespace,
            name=key.name,
            ports=tuple(ServicePort(name, number, Protocol.TCP, number)
                        for name, number in sorted(ports.items())),
        )
        try:
            return await self._store(service, None, create=True)
        except ServiceExists:
            # Another request created it first: register against that one.
            existing = await self.backend.get_service(key)
            if existing is None:
                raise NotFound(f"service {key} was deleted while registering") from None
            return existing

    async def _store(self, service: Service, old: Service | None, *, create: bool = False
                     ) -> Service:
        if service.type is not ServiceType.CLUSTER_IP:
            await self._settle(await self.backend.put_service(service, create=create),
                               "service", "put")
            return service
        wanted = self._families(service, old)
        fixed: dict[IPFamily, str] = {}  # asked for, or kept from before
        for index, ip in enumerate(service.cluster_ips):
            family = ip_family(ip)
            found = self.cluster_ips.of(family)
            if found is None or ip not in found:
                where = found.network if found else f"any {family.value} service CIDR"
                raise Conflict(f"clusterIP {ip} is outside {where}",
                               "clusterIP" if index == 0 else f"clusterIPs[{index}]")
            fixed[family] = ip
        if old is not None:  # a service keeps its addresses across updates
            for ip in old.cluster_ips:
                fixed.setdefault(ip_family(ip), ip)
        taken = self.watcher.view.cluster_ips()
        free = {f: self._range(f).free(taken) for f in wanted if f not in fixed}
        picked: dict[IPFamily, str] = {}
        for _ in range(ALLOCATION_TRIES):
            for family, candidates in free.items():
                if family not in picked:
                    ip = next(candidates, None)
                    if ip is None:
                        raise Conflict(f"no free clusterIP left in {self._range(family).network}",
                                       "clusterIP")
                    picked[family] = ip
            ips = tuple(fixed.get(f) or picked[f] for f in wanted)
            stored = replace(service, cluster_ips=ips, ip_families=wanted)
            try:
                revision = await self.backend.put_service(stored, create=create)
            except ClusterIPTaken as error:
                if error.ip not in picked.values():
                    raise  # asked for by the user: another service has it
                del picked[ip_family(error.ip)]  # another replica took it first: pick again
                continue
            await self._settle(revision, "service", "put")
            return stored
        raise Conflict("could not allocate a free clusterIP: too much contention", "clusterIP")

    def _range(self, family: IPFamily) -> ClusterIPRange:
        found = self.cluster_ips.of(family)
        assert found is not None, "_families keeps only configured families"
        return found

    def _families(self, service: Service, old: Service | None) -> tuple[IPFamily, ...]:
        """The families a ClusterIP service gets addresses in, the primary first, by its
        ipFamilyPolicy: what it asked for, else what it had, else this sdns's primary; a dual
        policy adds the other configured family (required, or preferred when there is one)."""
        configured = self.cluster_ips.families
        policy = service.ip_family_policy
        wanted = service.ip_families
        if not wanted and old is not None and old.ip_families:
            wanted = old.ip_families
        if not wanted:
            wanted = configured[:1]
        if policy is IPFamilyPolicy.SINGLE_STACK:
            wanted = wanted[:1]
        elif len(wanted) == 1:
            wanted += tuple(f for f in configured if f is not wanted[0])
        if policy is IPFamilyPolicy.PREFER_DUAL_STACK:
            wanted = wanted[:1] + tuple(f for f in wanted[1:] if f in configured)
        missing = [f for f in wanted if f not in configured]
        if missing:
            raise Invalid(f"this sdns has no {missing[0].value} service CIDR (--service-cidr)",
                          "ipFamilies")
        if policy is IPFamilyPolicy.REQUIRE_DUAL_STACK and len(wanted) < 2:
            raise Invalid("RequireDualStack needs a service CIDR of each family; this sdns has "
                          f"only {configured[0].value} (--service-cidr)", "ipFamilyPolicy")
        return families(wanted)

    async def _settle(self, revision: int, kind: str, action: str) -> None:
        """Count the write stored at ``revision``, and return once this replica's view holds
        it (``NotYetVisible`` past ``visible_within``)."""
        metrics.WRITES.labels(kind, action).inc()
        stored = time.monotonic()
        if not await self.watcher.caught_up(revision, self.visible_within):
            raise NotYetVisible(revision, self.visible_within)
        metrics.PROGRAMMING.observe(time.monotonic() - stored)


def _check_port(request: EndpointRequest, ports: dict[str, int], field: str) -> None:
    check = request.check
    if check is None:
        return
    if (check.port is None and not ports) or (isinstance(check.port, str) and
                                              check.port not in ports):
        raise Invalid("the check's port must be one of the endpoint's ports" if check.port
                      else "a check needs a port, and the endpoint has none",
                      f"{field}check.port")
