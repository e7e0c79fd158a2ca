"""Active health checks of the endpoints that carry one, run by the API replicas.

Each checked endpoint is probed by exactly one live replica: the one that ranks highest for it
among the replicas announced in the store (rendezvous hashing), so when a replica goes only its
endpoints move. Probes are spread over their interval by a fixed offset per endpoint, never in a
burst, with at most ``max_in_flight`` at once. Only a change of status is written to the store
(every replica then answers the same); a steady state writes nothing. An endpoint critical for
its ``deregisterAfter`` is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import time
from dataclasses import replace

import aiohttp

from sdns import probe
from sdns.errors import SdnsError
from sdns.model import CheckType, Endpoint, HealthStatus, ServiceKey
from sdns.registry import Registry
from sdns.tasks import cancel

MAX_IN_FLIGHT = 256
SCAN_SECONDS = 1.0  # how soon a new checked endpoint gets its first probe scheduled
REPLICAS_SECONDS = 2.0  # how often the replicas in the store are read again
log = logging.getLogger(__name__)

Key = tuple[ServiceKey, str]


def _rank(replica: str, key: Key) -> bytes:
    return hashlib.blake2b(f"{replica}|{key[0]}|{key[1]}".encode(), digest_size=8).digest()


def owner(replicas: list[str], key: Key) -> str:
    """The replica that checks ``key``: the highest ranked, so that one leaving moves only
    its own endpoints."""
    return max(replicas, key=lambda replica: _rank(replica, key))


def offset(key: Key, interval: float) -> float:
    """Where in its interval ``key`` is probed: the same place every time, spread evenly."""
    point = int.from_bytes(_rank("", key), "big") / 2**64
    return point * interval


def port_of(endpoint: Endpoint) -> int | None:
    assert endpoint.health is not None
    wanted, ports = endpoint.health.check.port, dict(endpoint.ports)
    if isinstance(wanted, int):
        return wanted
    if wanted is None:
        return endpoint.ports[0][1] if endpoint.ports else None
    return ports.get(wanted)


class Checker:
    def __init__(self, registry: Registry, replica: str,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.registry, self.replica = registry, replica
        self.view = registry.watcher.view
        self.replicas = [replica]
        self._limit = asyncio.Semaphore(max_in_flight)
        self._due: list[tuple[float, Key]] = []
        self._scheduled: set[Key] = set()
        self._runs: dict[Key, probe.Run] = {}  # as this replica saw them
        self._probing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = probe.session()
        self._task = asyncio.create_task(self._run(), name="health-checks")

    async def close(self) -> None:
        if self._task is not None:
            await cancel(self._task)
        for task in list(self._probing):
            await cancel(task)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        next_scan = next_replicas = 0.0
        while True:
            now = time.monotonic()
            if now >= next_replicas:
                await self._read_replicas()
                next_replicas = now + REPLICAS_SECONDS
            if now >= next_scan:
                self._scan(now)
                next_scan = now + SCAN_SECONDS
            while self._due and self._due[0][0] <= now:
                _, key = heapq.heappop(self._due)
                self._probe_due(key, now)
            wake = min(next_scan, next_replicas, self._due[0][0] if self._due else next_scan)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    async def _read_replicas(self) -> None:
        with contextlib.suppress(SdnsError, TimeoutError):  # an outage: keep what was known
            found = await asyncio.wait_for(self.registry.replicas(), REPLICAS_SECONDS)
            self.replicas = sorted(set(found) | {self.replica})

    def _mine(self, key: Key) -> bool:
        return owner(self.replicas, key) == self.replica

    def _checked(self, key: Key) -> Endpoint | None:
        endpoint = self.view.endpoint(*key)
        return endpoint if endpoint is not None and endpoint.health is not None else None

    def _scan(self, now: float) -> None:
        """Schedule the checked endpoints this replica owns and has not scheduled yet (the
        view keeps the set of checked ones, so endpoints without a check cost nothing)."""
        for key in list(self.view.checked - self._scheduled):
            endpoint = self._checked(key)
            if endpoint is None or endpoint.health is None or not self._mine(key):
                continue
            self._scheduled.add(key)
            heapq.heappush(self._due, (now + offset(key, endpoint.health.check.interval), key))

    def _probe_due(self, key: Key, now: float) -> None:
        endpoint = self._checked(key)
        if endpoint is None or not self._mine(key):
            self._scheduled.discard(key)  # gone, or another replica's now
            self._runs.pop(key, None)
            return
        assert endpoint.health is not None
        heapq.heappush(self._due, (now + endpoint.health.check.interval, key))
        task = asyncio.create_task(self._probe(key, endpoint))
        self._probing.add(task)
        task.add_done_callback(self._probing.discard)

    async def _probe(self, key: Key, endpoint: Endpoint) -> None:
        assert endpoint.health is not None and self._session is not None
        check, port = endpoint.health.check, port_of(endpoint)
        async with self._limit:
            if port is None:
                passed, output = False, "no such port on the endpoint"
            elif check.type is CheckType.HTTP:
                passed, output = await probe.http(self._session, endpoint.ip, port, check.path,
                                                  check.timeout)
            else:
                passed, output = await probe.tcp(endpoint.ip, port, check.timeout)
        try:
            await self._record(key, endpoint, passed, output)
        except SdnsError as error:  # the next probe tries again
            log.info("health of %s/%s not written: %s", key[0], key[1], error.reason)

    async def _record(self, key: Key, probed: Endpoint, passed: bool, output: str) -> None:
        current = self._checked(key)
        if current is None or current.health is None or probed.health is None or \
                current.health.check != probed.health.check or current.ip != probed.ip:
            self._runs.pop(key, None)  # changed while probed: start over
            return
        health = current.health
        status = self._runs.setdefault(key, probe.Run()).status(
            passed, health.check.rise, health.check.fall, health.status)
        now = time.time()
        if status is not health.status:
            log.info("%s/%s %s is %s: %s", key[0].namespace, key[0].name, key[1], status.value,
                     output)
            await self.registry.record_health(key[0], replace(current, health=replace(
                health, status=status, last_check=(now, output), since=now)))
        elif status is HealthStatus.CRITICAL and health.deregister_after is not None and \
                health.since is not None and now - health.since >= health.deregister_after:
            log.info("%s/%s %s was critical for %d s: deregistered", key[0].namespace,
                     key[0].name, key[1], health.deregister_after)
            await self.registry.delete_endpoint(key[0], key[1])
