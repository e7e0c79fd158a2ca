"""The service CIDRs (one per family) and how a free clusterIP is picked from them."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Container, Iterator

from sdns.model import IPFamily, ip_family

# Random picks before falling back to a scan, which only a nearly full range needs.
RANDOM_TRIES = 32


class ClusterIPRange:
    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.ip_network(cidr)
        # The network and (IPv4) broadcast addresses are never handed out.
        self._first = int(self.network.network_address) + 1
        last = int(self.network.broadcast_address)
        self._last = last - 1 if self.network.version == 4 else last

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        address = ipaddress.ip_address(ip)
        return address.version == self.network.version and self._first <= int(address) <= self._last

    def free(self, taken: Container[str]) -> Iterator[str]:
        """Addresses not in ``taken``: random ones first, then every one in order."""
        make = ipaddress.ip_address
        for _ in range(RANDOM_TRIES):
            ip = str(make(random.randint(self._first, self._last)))
            if ip not in taken:
                yield ip
        for number in range(self._first, self._last + 1):
            ip = str(make(number))
            if ip not in taken:
                yield ip


class ClusterIPRanges:
    """The service CIDR of each family, the primary first."""

    def __init__(self, cidrs: tuple[str, ...]) -> None:
        self.ranges = tuple(ClusterIPRange(cidr) for cidr in cidrs)
        self.families = tuple(ip_family(str(r.network.network_address)) for r in self.ranges)

    def of(self, family: IPFamily) -> ClusterIPRange | None:
        return next((r for r, f in zip(self.ranges, self.families, strict=True)
                     if f is family), None)

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(r.network for r in self.ranges)
