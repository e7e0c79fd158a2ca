"""Untrusted input (API paths and JSON bodies) → model values, or ``Invalid`` naming the field."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from sdns.errors import Invalid
from sdns.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    CheckType,
    HealthCheck,
    IPFamily,
    IPFamilyPolicy,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
    SessionAffinity,
    families,
    ip_family,
)

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOST_LABEL = re.compile(r"[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?")
MAX_TTL = 2**31 - 1


def label(value: Any, field: str, max_length: int = 63) -> str:
    """A DNS-1123 label: lowercase letters, digits and '-', not at either end."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_length:
        raise Invalid(f"{field} must be a string of 1 to {max_length} characters", field)
    if not _LABEL.fullmatch(value):
        raise Invalid(
            f"{field} {value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit)",
            field,
        )
    return value


def service_key(namespace: str, name: str) -> ServiceKey:
    return ServiceKey(label(namespace, "namespace"), label(name, "name"))


def ip_address(value: Any, field: str) -> str:
    """An IPv4 or IPv6 address in canonical text form."""
    if not isinstance(value, str):
        raise Invalid(f"{field} must be an IP address string", field)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Invalid(f"{field} {value!r} is not an IPv4 or IPv6 address", field) from None


def port_number(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise Invalid(f"{field} must be an integer from 1 to 65535", field)
    return value


def domain_name(value: Any, field: str) -> str:
    """A fully qualified host name, lowercased, without the trailing dot."""
    if not isinstance(value, str):
        raise Invalid(f"{field} must be a domain name string", field)
    name = value.lower().removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(
        len(part) <= 63 and _HOST_LABEL.fullmatch(part) for part in labels
    ):
        raise Invalid(f"{field} {value!r} is not a valid domain name", field)
    return name


def _object(body: Any, allowed: set[str], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid(f"{what} must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(f"unknown field {unknown[0]!r} in {what}", unknown[0])
    return body


def _matches_path(body: dict[str, Any], field: str, expected: str) -> None:
    if field in body and body[field] != expected:
        raise Invalid(f"{field} {body[field]!r} in the body differs from {expected!r} in the path",
                      field)


def service(key: ServiceKey, body: Any) -> Service:
    """A service as the user asked for it: ``cluster_ips`` and ``ip_families`` hold what was
    asked (empty means "allocate" and "as the policy says"); the registry completes them."""
    data = _object(body, {"namespace", "name", "type", "ports", "clusterIP", "clusterIPs",
                          "ipFamilies", "ipFamilyPolicy", "externalName", "sessionAffinity",
                          "sessionAffinityTimeout"}, "service")
    _matches_path(data, "namespace", key.namespace)
    _matches_path(data, "name", key.name)
    try:
        kind = ServiceType(data.get("type", "ClusterIP"))
    except ValueError:
        raise Invalid(f"type must be one of {', '.join(t.value for t in ServiceType)}",
                      "type") from None
    cluster_ips = _cluster_ips(data)
    if cluster_ips == ["None"] and kind is not ServiceType.EXTERNAL_NAME:
        kind, cluster_ips = ServiceType.HEADLESS, []
    external_name = data.get("externalName")
    if kind is ServiceType.EXTERNAL_NAME:
        if external_name is None:
            raise Invalid("an ExternalName service needs externalName", "externalName")
        external_name = domain_name(external_name, "externalName")
    elif external_name is not None:
        raise Invalid(f"externalName is only for ExternalName services, not {kind.value}",
                      "externalName")
    if kind is not ServiceType.CLUSTER_IP:
        unasked = {"clusterIP": "None", "clusterIPs": ["None"], "ipFamilies": None,
                   "ipFamilyPolicy": None}
        for field, allowed in unasked.items():
            if data.get(field) not in (None, allowed):
                raise Invalid(f"a {kind.value} service has no {field}", field)
    policy = _policy(data.get("ipFamilyPolicy"))
    requested = _families(data.get("ipFamilies"))
    named = "clusterIPs" in data  # errors name the field the user wrote
    addresses = tuple(ip_address(ip, f"clusterIPs[{i}]" if named else "clusterIP")
                      for i, ip in enumerate(cluster_ips))
    _check_stack(addresses, requested, policy)
    try:
        affinity = SessionAffinity(data.get("sessionAffinity", "None"))
    except ValueError:
        raise Invalid("sessionAffinity must be None or ClientIP", "sessionAffinity") from None
    timeout = data.get("sessionAffinityTimeout", DEFAULT_AFFINITY_TIMEOUT)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 86400:
        raise Invalid("sessionAffinityTimeout must be a number of seconds from 1 to 86400",
                      "sessionAffinityTimeout")
    return Service(
        namespace=key.namespace,
        name=key.name,
        type=kind,
        ports=service_ports(data.get("ports", [])),
        cluster_ips=addresses,
        ip_families=families(requested or tuple(ip_family(ip) for ip in addresses)),
        ip_family_policy=policy,
        external_name=external_name,
        session_affinity=affinity,
        affinity_timeout=timeout,
    )


def _cluster_ips(data: dict[str, Any]) -> list[Any]:
    """``clusterIPs``, or ``[clusterIP]``; both only when they agree."""
    single, several = data.get("clusterIP"), data.get("clusterIPs")
    if several is None:
        return [] if single is None else [single]
    if not isinstance(several, list) or not 1 <= len(several) <= 2:
        raise Invalid("clusterIPs must be a list of one or two addresses", "clusterIPs")
    if single is not None and single != several[0]:
        raise Invalid(f"clusterIP {single!r} differs from clusterIPs[0] {several[0]!r}",
                      "clusterIP")
    return several


def _policy(value: Any) -> IPFamilyPolicy:
    if value is None:
        return IPFamilyPolicy.SINGLE_STACK
    try:
        return IPFamilyPolicy(value)
    except ValueError:
        raise Invalid("ipFamilyPolicy must be one of "
                      f"{', '.join(p.value for p in IPFamilyPolicy)}", "ipFamilyPolicy") from None


def _families(value: Any) -> tuple[IPFamily, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not 1 <= len(value) <= 2:
        raise Invalid("ipFamilies must be a list of one or two of IPv4, IPv6", "ipFamilies")
    try:
        found = tuple(IPFamily(item) for item in value)
    except ValueError:
        raise Invalid("ipFamilies must be a list of one or two of IPv4, IPv6",
                      "ipFamilies") from None
    if len(set(found)) != len(found):
        raise Invalid("ipFamilies names a family twice", "ipFamilies")
    return found


def _check_stack(addresses: tuple[str, ...], requested: tuple[IPFamily, ...],
                 policy: IPFamilyPolicy) -> None:
    """The addresses, families and policy asked for agree with one another."""
    given = tuple(ip_family(ip) for ip in addresses)
    if len(set(given)) != len(given):
        raise Invalid("clusterIPs holds two addresses of one family", "clusterIPs")
    if requested and given and given != requested[:len(given)]:
        raise Invalid("clusterIPs must follow the order of ipFamilies", "clusterIPs")
    most = max(len(given), len(requested))
    if policy is IPFamilyPolicy.SINGLE_STACK and most > 1:
        raise Invalid("a SingleStack service has one family; ask for PreferDualStack or "
                      "RequireDualStack for two", "ipFamilyPolicy")


def service_ports(value: Any) -> tuple[ServicePort, ...]:
    if not isinstance(value, list):
        raise Invalid("ports must be a list of objects", "ports")
    ports: list[ServicePort] = []
    for i, item in enumerate(value):
        field = f"ports[{i}]"
        data = _object(item, {"name", "port", "protocol", "targetPort"}, field)
        if "name" not in data:
            raise Invalid(f"{field}.name is required: SRV records and endpoints refer to "
                          "ports by name", f"{field}.name")
        if "port" not in data:
            raise Invalid(f"{field}.port is required", f"{field}.port")
        try:
            protocol = Protocol(data.get("protocol", "TCP"))
        except ValueError:
            raise Invalid(f"{field}.protocol must be one of TCP, UDP, SCTP",
                          f"{field}.protocol") from None
        port = ServicePort(
            name=label(data["name"], f"{field}.name", max_length=15),
            port=port_number(data["port"], f"{field}.port"),
            protocol=protocol,
            target_port=port_number(data.get("targetPort", data["port"]), f"{field}.targetPort"),
        )
        if any(p.name == port.name for p in ports):
            raise Invalid(f"port name {port.name!r} is used twice", f"{field}.name")
        if any((p.port, p.protocol) == (port.port, port.protocol) for p in ports):
            raise Invalid(f"port {port.port}/{port.protocol.value} is used twice", f"{field}.port")
        ports.append(port)
    return tuple(ports)


@dataclass(frozen=True, slots=True)
class EndpointRequest:
    """An endpoint as registered: ports holds only the names the user gave."""

    id: str
    ip: str
    hostname: str
    ports: dict[str, int]
    ready: bool
    ttl: int
    lease: str | None
    check: HealthCheck | None = None
    deregister_after: int | None = None


_LEASE_ID = re.compile(r"[0-9a-f]{1,32}")
MAX_LEASE_TTL = 86400


def lease_id(value: Any, field: str) -> str:
    """A lease id as sdns hands them out: 1 to 32 lowercase hex digits."""
    if not isinstance(value, str) or not _LEASE_ID.fullmatch(value):
        raise Invalid(f"{field} must be a lease id (1 to 32 lowercase hex digits)", field)
    return value


def lease_ttl(body: Any) -> int:
    """The ttl of a lease to create: ``{"ttl": seconds}``."""
    data = _object(body, {"ttl"}, "lease")
    ttl = data.get("ttl")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_LEASE_TTL:
        raise Invalid(f"ttl must be a whole number of seconds from 1 to {MAX_LEASE_TTL}", "ttl")
    return ttl


def _whole(value: Any, field: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Invalid(f"{field} must be a whole number from {low} to {high}", field)
    return value


def check(body: Any) -> HealthCheck:
    """An active check: ``{"type": "http" | "tcp", "port": name or number, "path": "/healthz",
    "interval": 10, "timeout": 2, "rise": 1, "fall": 3}``; the timeout defaults to 2 s, or
    half the interval when that is shorter."""
    data = _object(body, {"type", "port", "path", "interval", "timeout", "rise", "fall"},
                   "check")
    try:
        kind = CheckType(data.get("type"))
    except ValueError:
        raise Invalid("check.type must be http or tcp", "check.type") from None
    port = data.get("port")
    if isinstance(port, str):
        label(port, "check.port", max_length=15)
    elif port is not None:
        port_number(port, "check.port")
    path = data.get("path", "/healthz")
    if kind is CheckType.TCP and "path" in data:
        raise Invalid("a tcp check has no path", "check.path")
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 1024 or \
            any(ord(c) < 0x21 or ord(c) > 0x7E for c in path):
        raise Invalid("check.path must be a URL path starting with /", "check.path")
    interval = _whole(data.get("interval", 10), "check.interval", 1, 3600)
    timeout = data.get("timeout", min(2.0, interval / 2))
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or \
            not 0 < timeout < interval:
        raise Invalid("check.timeout must be a number of seconds above 0 and below the "
                      "interval", "check.timeout")
    return HealthCheck(kind, port, path, interval, float(timeout),
                       _whole(data.get("rise", 1), "check.rise", 1, 10),
                       _whole(data.get("fall", 3), "check.fall", 1, 10))


def endpoint(endpoint_id: str, body: Any) -> EndpointRequest:
    endpoint_id = label(endpoint_id, "id")
    data = _object(body, {"id", "ip", "hostname", "ports", "ready", "ttl", "lease", "check",
                          "deregisterAfter"}, "endpoint")
    _matches_path(data, "id", endpoint_id)
    if "ip" not in data:
        raise Invalid("ip is required", "ip")
    ports = data.get("ports", {})
    if not isinstance(ports, dict):
        raise Invalid('ports must be an object of port name to number, e.g. {"http": 8080}',
                      "ports")
    ready = data.get("ready", True)
    if not isinstance(ready, bool):
        raise Invalid("ready must be true or false", "ready")
    ttl = data.get("ttl", 0)
    if ttl is None:
        ttl = 0
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL:
        raise Invalid(f"ttl must be a whole number of seconds from 0 to {MAX_TTL}", "ttl")
    lease = data.get("lease")
    if lease is not None:
        lease = lease_id(lease, "lease")
        if ttl:
            raise Invalid("an endpoint lives by a lease or by its own ttl, not both", "lease")
    return EndpointRequest(
        id=endpoint_id,
        ip=ip_address(data["ip"], "ip"),
        hostname=label(data.get("hostname") or endpoint_id, "hostname"),
        ports={
            label(name, f"ports.{name}", max_length=15): port_number(number, f"ports.{name}")
            for name, number in ports.items()
        },
        ready=ready,
        ttl=ttl,
        lease=lease,
        check=None if data.get("check") is None else check(data["check"]),
        deregister_after=None if data.get("deregisterAfter") is None else
        _whole(data["deregisterAfter"], "deregisterAfter", 1, MAX_TTL),
    )


MAX_SET = 10_000


def endpoint_set(body: Any) -> list[EndpointRequest]:
    """``{"endpoints": [...]}``, each item an endpoint with its ``id``; errors name the item
    (``endpoints[3].ip``)."""
    data = _object(body, {"endpoints"}, "body")
    items = data.get("endpoints")
    if not isinstance(items, list) or len(items) > MAX_SET:
        raise Invalid(f"endpoints must be a list of at most {MAX_SET} endpoints", "endpoints")
    found: list[EndpointRequest] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict) or "id" not in item:
                raise Invalid("each endpoint needs an id", "id")
            request = endpoint(item["id"], item)
        except Invalid as error:
            field = f"endpoints[{i}]" + (f".{error.field}" if error.field else "")
            raise Invalid(f"{field}: {error.reason}", field) from None
        if request.id in seen:
            raise Invalid(f"endpoints[{i}].id {request.id!r} is given twice", f"endpoints[{i}].id")
        seen.add(request.id)
        found.append(request)
    return found
