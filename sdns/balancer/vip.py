"""Making VIPs local: the userspace proxy can only listen on addresses this host has. Loopback
addresses always are; as root, others are added to ``lo`` as /32 (/128) and removed when their
service goes (kube-proxy's IPVS mode uses a dummy interface; this kernel has no dummy type)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os

log = logging.getLogger(__name__)


async def _ip(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    if process.returncode != 0 and b"File exists" not in err:
        raise OSError(f"ip {' '.join(args)}: {err.decode().strip()}")


class LocalAddresses:
    def __init__(self) -> None:
        self.root = os.geteuid() == 0
        self.added: set[str] = set()
        self._warned = False

    async def ensure(self, vip: str) -> bool:
        """Whether ``vip`` is (now) an address of this host."""
        address = ipaddress.ip_address(vip)
        if address.is_loopback or vip in self.added:
            return True
        if not self.root:
            if not self._warned:
                log.warning("clusterIPs outside loopback (such as %s) cannot be served by the "
                            "userspace balancer without root: use a service CIDR inside "
                            "127.0.0.0/8 (e.g. 127.96.0.0/16), or run sdns as root", vip)
                self._warned = True
            return False
        prefix = 32 if address.version == 4 else 128
        await _ip("addr", "add", f"{vip}/{prefix}", "dev", "lo")
        self.added.add(vip)
        return True

    async def release(self, vip: str) -> None:
        if vip in self.added:
            self.added.discard(vip)
            prefix = 32 if ipaddress.ip_address(vip).version == 4 else 128
            try:
                await _ip("addr", "del", f"{vip}/{prefix}", "dev", "lo")
            except OSError as error:
                log.warning("could not remove %s from lo: %s", vip, error)

    async def release_all(self) -> None:
        for vip in list(self.added):
            await self.release(vip)


async def route_to_lo(cidr: str, add: bool) -> None:
    """Locally generated traffic to the service CIDR needs a route before NAT can see it."""
    await _ip("route", "replace" if add else "del", cidr, "dev", "lo")
