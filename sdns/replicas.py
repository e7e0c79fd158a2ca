"""This replica's presence in the store, so that every replica (and the dashboard) sees who
serves from it: announced at start, again every third of ``PRESENCE_TTL``, and gone within it
after the replica stops answering (at once when it stops cleanly)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from sdns.config import HostPort
from sdns.errors import SdnsError
from sdns.store import Backend
from sdns.tasks import cancel

PRESENCE_TTL = 10  # seconds
log = logging.getLogger(__name__)


def replica_name(api_addr: HostPort) -> str:
    """How this replica is named among the others: the API's address, or the host name and
    the port when it listens on every address."""
    try:
        unspecified = ipaddress.ip_address(api_addr.host).is_unspecified
    except ValueError:
        unspecified = False
    host = socket.gethostname() if unspecified else api_addr.host
    return f"{host}:{api_addr.port}"


class Presence:
    def __init__(self, backend: Backend, name: str) -> None:
        self.backend, self.name = backend, name
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with contextlib.suppress(SdnsError):  # an outage at start: the loop tries again
            await self.backend.announce(self.name, PRESENCE_TTL)
        self._task = asyncio.create_task(self._keep(), name="presence")

    async def close(self) -> None:
        if self._task is not None:
            await cancel(self._task)

    async def _keep(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(PRESENCE_TTL / 3)
            try:
                await self.backend.announce(self.name, PRESENCE_TTL)
            except SdnsError as error:
                if not failing:
                    log.warning("cannot announce this replica to the store: %s", error.reason)
                failing = True
            else:
                if failing:
                    log.info("this replica is announced to the store again")
                failing = False
