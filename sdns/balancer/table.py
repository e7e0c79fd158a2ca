"""The VIP table: which ready endpoints stand behind each clusterIP, port and protocol. Derived
from the watcher's view; a pure function, shared by the userspace proxy and nftables."""

from __future__ import annotations

from dataclasses import dataclass

from sdns.model import Protocol, ServiceKey, ServiceType, SessionAffinity, ip_family
from sdns.view import View


@dataclass(frozen=True, slots=True)
class Backend:
    endpoint_id: str
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class Frontend:
    """VIP:port of one service port, and where its connections go."""

    key: ServiceKey
    port_name: str
    vip: str
    port: int
    protocol: Protocol
    backends: tuple[Backend, ...]
    affinity: SessionAffinity = SessionAffinity.NONE
    affinity_timeout: int = 0

    @property
    def address(self) -> tuple[str, int, Protocol]:
        return (self.vip, self.port, self.protocol)


def frontends(view: View, key: ServiceKey) -> list[Frontend]:
    """The frontends of one service: each port on each of its clusterIPs (none unless it is a
    ClusterIP service). A VIP of one family goes to the endpoints of that family."""
    service = view.service(key)
    if service is None or service.type is not ServiceType.CLUSTER_IP:
        return []
    ready = view.ready_endpoints(key)
    return [
        Frontend(key, port.name, vip, port.port, port.protocol,
                 tuple(Backend(e.id, e.ip, e.port(port)) for e in ready
                       if ip_family(e.ip) is ip_family(vip)),
                 service.session_affinity, service.affinity_timeout)
        for vip in service.cluster_ips for port in service.ports
    ]
