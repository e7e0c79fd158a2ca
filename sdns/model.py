"""The one vocabulary of sdns: services, their ports, endpoints and change events.

Values are immutable. ``to_json``/``from_json`` give the wire form used by the HTTP API and by
the backends for storage; ``from_json`` trusts its input (user input goes through
``sdns.validation`` first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, NamedTuple


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    HEADLESS = "Headless"
    EXTERNAL_NAME = "ExternalName"


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class SessionAffinity(StrEnum):
    NONE = "None"
    CLIENT_IP = "ClientIP"


class IPFamily(StrEnum):
    IPV4 = "IPv4"
    IPV6 = "IPv6"


class IPFamilyPolicy(StrEnum):
    """How many families a ClusterIP service gets addresses in (Kubernetes dual-stack)."""

    SINGLE_STACK = "SingleStack"
    PREFER_DUAL_STACK = "PreferDualStack"
    REQUIRE_DUAL_STACK = "RequireDualStack"


def ip_family(ip: str) -> IPFamily:
    """The family of an address in canonical text form."""
    return IPFamily.IPV6 if ":" in ip else IPFamily.IPV4


DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, as kube-proxy

# Decoding hundreds of thousands of stored values at startup: a dict lookup is several times
# cheaper than calling the enum class.
_SERVICE_TYPES = {t.value: t for t in ServiceType}
_PROTOCOLS = {p.value: p for p in Protocol}
_AFFINITIES = {a.value: a for a in SessionAffinity}
_FAMILIES = {f.value: f for f in IPFamily}
_POLICIES = {p.value: p for p in IPFamilyPolicy}

PortMap = tuple[tuple[str, int], ...]
# Services mostly have one of a few port lists, and the endpoints of a service one port map:
# decoded values share one copy of each. Bounded, so that odd values cannot grow it for ever.
SHARED_KEPT = 10_000
_PORT_MAPS: dict[PortMap, PortMap] = {}
_SERVICE_PORTS: dict[tuple[Any, ...], tuple[ServicePort, ...]] = {}


def shared_ports(ports: PortMap) -> PortMap:
    """The one kept copy of an endpoint port map equal to ``ports``."""
    if len(_PORT_MAPS) < SHARED_KEPT:
        return _PORT_MAPS.setdefault(ports, ports)
    return _PORT_MAPS.get(ports, ports)


class ServiceKey(NamedTuple):
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: Protocol = Protocol.TCP
    target_port: int = 0  # 0 means "same as port"; see ``target``

    @property
    def target(self) -> int:
        return self.target_port or self.port

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "port": self.port,
            "protocol": self.protocol.value,
            "targetPort": self.target,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServicePort:
        return cls(
            name=data["name"],
            port=data["port"],
            protocol=_PROTOCOLS[data.get("protocol", "TCP")],
            target_port=data.get("targetPort", data["port"]),
        )


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: ServiceType = ServiceType.CLUSTER_IP
    ports: tuple[ServicePort, ...] = ()
    # ClusterIP services only: an address per family, the first the primary (``cluster_ip``);
    # the families asked for, in order, and the policy that decides how many
    cluster_ips: tuple[str, ...] = ()
    ip_families: tuple[IPFamily, ...] = ()
    ip_family_policy: IPFamilyPolicy = IPFamilyPolicy.SINGLE_STACK
    external_name: str | None = None  # only for ExternalName services
    session_affinity: SessionAffinity = SessionAffinity.NONE
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    # One key object per service: every map of services shares it instead of a copy each.
    key: ServiceKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ServiceKey(self.namespace, self.name))
        if self.cluster_ips and not self.ip_families:
            object.__setattr__(self, "ip_families",
                               families(tuple(ip_family(ip) for ip in self.cluster_ips)))

    @property
    def cluster_ip(self) -> str | None:
        """The primary clusterIP."""
        return self.cluster_ips[0] if self.cluster_ips else None

    def port(self, name: str) -> ServicePort | None:
        return next((p for p in self.ports if p.name == name), None)

    def to_json(self) -> dict[str, Any]:
        headless = self.type is ServiceType.HEADLESS
        cluster_ip = self.type is ServiceType.CLUSTER_IP
        return {
            "namespace": self.namespace,
            "name": self.name,
            "type": self.type.value,
            "ports": [p.to_json() for p in self.ports],
            "clusterIP": "None" if headless else self.cluster_ip,
            "clusterIPs": ["None"] if headless else list(self.cluster_ips),
            "ipFamilies": [f.value for f in self.ip_families],
            "ipFamilyPolicy": self.ip_family_policy.value if cluster_ip else None,
            "externalName": self.external_name,
            "sessionAffinity": self.session_affinity.value,
            "sessionAffinityTimeout": self.affinity_timeout,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Service:
        service_type = _SERVICE_TYPES[data["type"]]
        cluster_ips: tuple[str, ...] = ()
        if service_type is ServiceType.CLUSTER_IP:  # before dual-stack, only clusterIP
            first = data.get("clusterIP")
            cluster_ips = tuple(data.get("clusterIPs") or ([first] if first else []))
        return cls(
            namespace=data["namespace"],
            name=data["name"],
            type=service_type,
            ports=_service_ports(data.get("ports", [])),
            cluster_ips=cluster_ips,
            ip_families=families(tuple(_FAMILIES[f] for f in data.get("ipFamilies") or ())
                                 or tuple(ip_family(ip) for ip in cluster_ips)),
            ip_family_policy=_POLICIES[data.get("ipFamilyPolicy") or "SingleStack"],
            external_name=data.get("externalName"),
            session_affinity=_AFFINITIES[data.get("sessionAffinity", "None")],
            affinity_timeout=data.get("sessionAffinityTimeout", DEFAULT_AFFINITY_TIMEOUT),
        )


_FAMILY_LISTS = {(a,): (a,) for a in IPFamily} | {
    (a, b): (a, b) for a in IPFamily for b in IPFamily if a is not b}


def families(value: tuple[IPFamily, ...]) -> tuple[IPFamily, ...]:
    """The one kept copy of a list of families (there are five)."""
    return _FAMILY_LISTS.get(value, value)


def _service_ports(items: list[dict[str, Any]]) -> tuple[ServicePort, ...]:
    """The decoded ``ports`` of a service, one copy for every service with the same list."""
    key = tuple(tuple(item.items()) for item in items)
    ports = _SERVICE_PORTS.get(key)
    if ports is None:
        ports = tuple(ServicePort.from_json(item) for item in items)
        if len(_SERVICE_PORTS) < SHARED_KEPT:
            _SERVICE_PORTS[key] = ports
    return ports


class HealthStatus(StrEnum):
    PASSING = "passing"
    CRITICAL = "critical"
    UNKNOWN = "unknown"  # not checked yet: not served


class CheckType(StrEnum):
    HTTP = "http"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """An active check of an endpoint, shaped like a Kubernetes readiness probe and always
    aimed at the endpoint's own IP. ``port`` names one of its ports, or is a number; None is
    its first port."""

    type: CheckType
    port: str | int | None = None
    path: str = "/healthz"
    interval: int = 10  # seconds
    timeout: float = 2.0  # seconds, below interval
    rise: int = 1
    fall: int = 3

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"type": self.type.value, "port": self.port}
        if self.type is CheckType.HTTP:
            found["path"] = self.path
        return found | {"interval": self.interval, "timeout": self.timeout, "rise": self.rise,
                        "fall": self.fall}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HealthCheck:
        return cls(CheckType(data["type"]), data.get("port"), data.get("path", "/healthz"),
                   data["interval"], data["timeout"], data["rise"], data["fall"])


@dataclass(frozen=True, slots=True)
class Health:
    """An endpoint's check and where it stands; what changes is written only on a change of
    ``status``, so a steady state writes nothing."""

    check: HealthCheck
    status: HealthStatus = HealthStatus.UNKNOWN
    last_check: tuple[float, str] | None = None  # (Unix time, output) of the status change
    since: float | None = None  # Unix time the status began, for deregister_after
    deregister_after: int | None = None  # seconds critical before the endpoint is deleted

    def to_json(self, stored: bool) -> dict[str, Any]:
        found: dict[str, Any] = {
            "check": self.check.to_json(),
            "health": self.status.value,
            "lastCheck": None if self.last_check is None else {
                "time": _timestamp(self.last_check[0]), "output": self.last_check[1]},
            "deregisterAfter": self.deregister_after,
        }
        if stored:
            found["healthSince"] = self.since
        return found

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Health:
        last = data.get("lastCheck")
        return cls(HealthCheck.from_json(data["check"]), HealthStatus(data["health"]),
                   None if last is None else
                   (datetime.fromisoformat(last["time"]).timestamp(), last["output"]),
                   data.get("healthSince"), data.get("deregisterAfter"))


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    ip: str
    hostname: str
    ports: PortMap = ()  # (port name, number), sorted by name
    ready: bool = True
    ttl: int = 0  # seconds; 0 never expires, unless it is held by a lease
    expires_at: float | None = None  # Unix time, as the write saw it; None without ttl or lease
    # The lease that holds it: one registered with "lease", or, with a ttl, a lease of its own
    # that a heartbeat renews (kept in the stored form, not shown in the API)
    lease: str | None = None
    health: Health | None = None  # with an active check only

    @property
    def serving(self) -> bool:
        """Whether DNS and the balancer send clients to it: ready, and passing its check if
        it has one."""
        return self.ready and (self.health is None or
                               self.health.status is HealthStatus.PASSING)

    def port(self, service_port: ServicePort) -> int:
        """The number this endpoint serves ``service_port`` on."""
        return dict(self.ports).get(service_port.name, service_port.target)

    def to_json(self, stored: bool = False) -> dict[str, Any]:
        found = {
            "id": self.id,
            "ip": self.ip,
            "hostname": self.hostname,
            "ports": dict(self.ports),
            "ready": self.ready,
            "ttl": self.ttl,
            "lease": self.lease if stored or not self.ttl else None,
            "expiresAt": _timestamp(self.expires_at),
        }
        if self.health is not None:
            found |= self.health.to_json(stored)
        return found

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Endpoint:
        expires_at = data.get("expiresAt")
        endpoint_id = data["id"]
        hostname = data.get("hostname") or endpoint_id
        return cls(
            id=endpoint_id,
            ip=data["ip"],
            hostname=endpoint_id if hostname == endpoint_id else hostname,  # one string, not two
            ports=shared_ports(tuple(sorted(data.get("ports", {}).items()))),
            ready=data.get("ready", True),
            ttl=data.get("ttl", 0),
            expires_at=datetime.fromisoformat(expires_at).timestamp() if expires_at else None,
            lease=data.get("lease"),
            health=Health.from_json(data) if "check" in data else None,
        )


@dataclass(frozen=True, slots=True)
class Lease:
    """A deadline that keeps every endpoint it holds alive; one renewal renews them all."""

    id: str
    ttl: int  # seconds a renewal adds
    expires_at: float  # Unix time
    endpoints: int = 0  # how many endpoints it holds, when the store says

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ttl": self.ttl, "expiresAt": _timestamp(self.expires_at),
                "endpoints": self.endpoints}


Action = Literal["put", "delete"]


@dataclass(frozen=True, slots=True)
class Event:
    """One change in a backend. ``endpoint_id`` is None for a change to the service itself;
    ``value`` is the new object for a put and None for a delete."""

    revision: int
    action: Action
    key: ServiceKey
    endpoint_id: str | None = None
    value: Service | Endpoint | None = None
    expired: bool = False  # a delete because its lease ran out, not because anyone asked

    def to_json(self, stored: bool = False) -> dict[str, Any]:
        value = self.value
        found = {
            "revision": self.revision,
            "action": self.action,
            "kind": "service" if self.endpoint_id is None else "endpoint",
            "namespace": self.key.namespace,
            "service": self.key.name,
            "id": self.endpoint_id,
            "object": None if value is None else
            value.to_json(stored) if isinstance(value, Endpoint) else value.to_json(),
        }
        if stored and self.expired:
            found["expired"] = True
        return found

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        value: Service | Endpoint | None = None
        if data["object"] is not None:
            kind = Service if data["kind"] == "service" else Endpoint
            value = kind.from_json(data["object"])
        return cls(data["revision"], data["action"], ServiceKey(data["namespace"],
                   data["service"]), data["id"], value, data.get("expired", False))


def _timestamp(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds")
