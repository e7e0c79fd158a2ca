"""The balancer as a subscriber of the watcher: changes mark services dirty, and one task brings
the data plane (userspace proxy or nftables) in line, so a change applies within milliseconds.

Like kube-proxy, it also resyncs everything every ``sync_seconds``, and an apply that failed (nft
refused the ruleset, a VIP:port could not be bound) is tried again, everything, after a back-off
that starts at ``RETRY_START`` and doubles up to the sync period."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sdns.balancer import nft
from sdns.balancer.proxy import UserspaceProxy
from sdns.balancer.table import Frontend, frontends
from sdns.balancer.vip import LocalAddresses, route_to_lo
from sdns.model import Protocol, ServiceKey
from sdns.tasks import cancel
from sdns.view import Change, View

log = logging.getLogger(__name__)

RETRY_START = 0.5  # seconds before a failed apply is tried again; doubles while it fails


class Balancer:
    def __init__(self, mode: str, view: View, service_cidrs: tuple[str, ...],
                 sync_seconds: float = 30) -> None:
        self.mode = mode
        self.view = view
        self.service_cidrs = service_cidrs
        self.sync_seconds = sync_seconds
        self.proxy = UserspaceProxy()
        self.addresses = LocalAddresses()
        self._dirty: set[ServiceKey] = set()
        self._everything = True
        self._wake = asyncio.Event()
        self._current: dict[ServiceKey, list[Frontend]] = {}
        self._task: asyncio.Task[None] | None = None

    # Subscriber of the watcher

    def changed(self, change: Change) -> None:
        self._dirty.add(change.key)
        self._wake.set()

    def reloaded(self) -> None:
        self._everything = True
        self._wake.set()

    # Life cycle

    async def start(self) -> None:
        if self.mode == "nftables":
            for cidr in self.service_cidrs:
                await route_to_lo(cidr, add=True)
        await self._reconcile()
        self._task = asyncio.create_task(self._run(), name="balancer")

    async def close(self) -> None:
        if self._task is not None:
            await cancel(self._task)
        if self.mode == "nftables":
            await nft.delete()
            for cidr in self.service_cidrs:
                with contextlib.suppress(OSError):
                    await route_to_lo(cidr, add=False)
        await self.proxy.close()
        await self.addresses.release_all()

    async def _run(self) -> None:
        retry = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), retry or self.sync_seconds)
            except TimeoutError:
                self._everything = True  # the periodic resync, or the retry of a failure
            self._wake.clear()
            try:
                applied = await self._reconcile()
            except (OSError, RuntimeError) as error:
                log.error("balancer could not apply the VIP table: %s", error)
                applied = False
            if applied:
                retry = 0.0
            else:  # a change that wakes it sooner must not pass over what failed
                self._everything = True
                retry = min(max(retry * 2, RETRY_START), self.sync_seconds)
                log.info("balancer: trying again in %g s", retry)
            self.proxy.prune_affinity()

    async def _reconcile(self) -> bool:
        """Bring the data plane in line with the view; False when part of it failed."""
        if self._everything:
            self._everything = False
            keys = set(self._current) | {s.key for s in self.view.services()}
        else:
            keys, self._dirty = self._dirty, set()
        removed: set[tuple[str, int, Protocol]] = set()
        changed: list[Frontend] = []
        for key in keys:
            before = self._current.pop(key, [])
            after = frontends(self.view, key)
            if after:
                self._current[key] = after
            removed |= {f.address for f in before} - {f.address for f in after}
            changed += after
        if self.mode == "nftables":
            await nft.apply(nft.render([f for fs in self._current.values() for f in fs]))
            return True
        wanted = [f for f in changed if await self.addresses.ensure(f.vip)]
        served = await self.proxy.apply(wanted, removed)
        still_used = {f.vip for fs in self._current.values() for f in fs}
        for vip in {vip for vip, _, _ in removed} - still_used:
            await self.addresses.release(vip)
        return served

    def describe(self) -> dict[str, Any]:
        """The VIP table with each endpoint's state and connection count."""
        services = []
        for frontend in sorted((f for fs in self._current.values() for f in fs),
                               key=lambda f: (f.key, f.port)):
            listener = self.proxy.listeners.get(frontend.address)
            endpoints = []
            for backend in frontend.backends:
                state = listener.states.get(backend) if listener else None
                endpoints.append({
                    "id": backend.endpoint_id, "ip": backend.ip, "port": backend.port,
                    "state": "up" if state is None or state.up else "down",
                    "connections": state.connections if state else None,
                })
            services.append({
                "namespace": frontend.key.namespace, "name": frontend.key.name,
                "port": frontend.port_name, "vip": frontend.vip,
                "vipPort": frontend.port, "protocol": frontend.protocol.value,
                "serving": self.mode == "nftables" or listener is not None,
                "affinities": len(listener.affinity) if listener else 0,
                "endpoints": endpoints,
            })
        return {"mode": self.mode, "services": services}
