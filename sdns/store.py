"""The store: the Backend protocol, the types every backend shares, and how implementations
are found.

A backend stores services, endpoints and clusterIP claims, expires endpoints whose TTL runs out,
and publishes every change as one ordered stream of ``Event`` with revisions. Implementations are
registered under the entry-point group ``sdns.backends`` so another package can add one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

from sdns.errors import Conflict, Invalid
from sdns.model import Endpoint, Event, Lease, Service, ServiceKey

if TYPE_CHECKING:
    from sdns.config import Config

ENTRY_POINT_GROUP = "sdns.backends"


class ClusterIPTaken(Conflict):
    def __init__(self, ip: str) -> None:
        super().__init__(f"clusterIP {ip} is already allocated to another service", "clusterIP")
        self.ip = ip


class ServiceExists(Conflict):
    def __init__(self, key: ServiceKey) -> None:
        super().__init__(f"service {key} already exists")


class LeaseNotFound(Invalid):
    """An endpoint names a lease that does not exist, or no longer does."""

    def __init__(self, lease_id: str) -> None:
        super().__init__(f"lease {lease_id} does not exist (expired, deleted, or never made)",
                         "lease")
        self.lease_id = lease_id


class Compacted(Exception):
    """The revision a watch asked to start from is no longer kept: reload a snapshot."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    services: list[Service] = field(default_factory=list)
    endpoints: dict[ServiceKey, list[Endpoint]] = field(default_factory=dict)


class Backend(Protocol):
    """What sdns needs from a store. Writes return the revision of the change they made."""

    expired: int  # endpoints this process removed because their lease ran out, for metrics

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> None:
        """Return when the store answers; ``BackendUnavailable`` when it does not."""
        ...

    async def snapshot(self) -> Snapshot: ...

    def watch(self, since: int) -> AsyncIterator[Event]:
        """Every event with revision >= ``since``, in order; raises ``Compacted``."""
        ...

    async def get_service(self, key: ServiceKey) -> Service | None: ...

    async def get_endpoint(self, key: ServiceKey, endpoint_id: str) -> Endpoint | None:
        """The endpoint as stored now (for a replica whose view has not caught up yet)."""
        ...

    async def put_service(self, service: Service, *, create: bool = False) -> int:
        """Store ``service``, claiming its clusterIP atomically (``ClusterIPTaken``) and
        releasing the one it had. With ``create``, fail with ``ServiceExists`` instead of
        replacing."""
        ...

    async def delete_service(self, key: ServiceKey) -> int:
        """Delete the service, its endpoints and its clusterIP claim; ``NotFound``."""
        ...

    async def put_endpoint(self, key: ServiceKey, endpoint: Endpoint) -> int:
        """Store ``endpoint``, held by its ``lease`` when it has one (``LeaseNotFound`` when
        that lease is gone); ``NotFound`` without service."""
        ...

    async def delete_endpoint(self, key: ServiceKey, endpoint_id: str) -> int: ...

    async def put_endpoints(self, key: ServiceKey, endpoints: list[Endpoint]) -> int:
        """Replace the service's whole endpoint set in one revision, atomically; as
        ``put_endpoint`` for each. ``Invalid`` naming ``endpoints`` when the store cannot take
        that many changes in one transaction."""
        ...

    # Leases: a renewal changes no stored value anyone watches, so it makes no event; when a
    # lease expires or is deleted, every endpoint it holds is deleted in one revision.

    async def create_lease(self, ttl: int) -> Lease: ...

    async def renew_lease(self, lease_id: str) -> Lease:
        """Push the lease's deadline to now + ttl; ``NotFound`` once it has expired."""
        ...

    async def get_lease(self, lease_id: str) -> Lease | None:
        """The lease with how many endpoints it holds; None once expired or deleted."""
        ...

    async def delete_lease(self, lease_id: str) -> int:
        """Delete the lease and its endpoints; the revision of that change (when it held none,
        any revision the view has reached, 0 included). ``NotFound``."""
        ...

    # Replicas: who serves from this store, for the status page and for sharing work

    async def announce(self, replica: str, ttl: int) -> None:
        """Say that ``replica`` serves, for ``ttl`` seconds from now; called again before
        that runs out. Not a watch object: nothing anyone watches changes."""
        ...

    async def replicas(self) -> list[str]:
        """The replicas announced and not run out, sorted."""
        ...


def names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def create(config: Config) -> Backend:
    """The backend named by ``config.backend``, built from the config."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=config.backend)
    if not found:
        raise ValueError(f"unknown backend {config.backend!r} (installed: {', '.join(names())})")
    factory = next(iter(found)).load()
    return factory.from_config(config)
