"""The userspace balancer: asyncio proxies listening on each VIP:port.

TCP: each new connection goes to the next ready endpoint in strict round robin; one that refuses
or does not answer the connect in time is skipped (the client gets the next one) and marked down
with back-off until a connect succeeds again. UDP: one upstream socket per client flow
(source ip:port), dropped after an idle timeout. With ClientIP session affinity, a client
sticks to the endpoint it had for the affinity timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from sdns.balancer.table import Backend, Frontend
from sdns.model import Protocol, SessionAffinity

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 1.0
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
UDP_IDLE_SECONDS = 60.0
PIPE_CHUNK = 256 * 1024  # bytes moved per read; larger chunks cost less Python per byte


@dataclass
class EndpointState:
    """How one endpoint behind a VIP:port is doing."""

    connections: int = 0
    down_until: float = 0.0
    backoff: float = 0.0

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def failed(self) -> None:
        self.backoff = min(BACKOFF_MAX, self.backoff * 2 or BACKOFF_START)
        self.down_until = time.monotonic() + self.backoff

    def succeeded(self) -> None:
        self.backoff, self.down_until = 0.0, 0.0


@dataclass
class Listener:
    """One VIP:port: its server, its endpoints and the round-robin position."""

    frontend: Frontend
    server: asyncio.AbstractServer | asyncio.DatagramTransport | None = None
    turn: int = 0
    states: dict[Backend, EndpointState] = field(default_factory=dict)
    affinity: dict[str, tuple[Backend, float]] = field(default_factory=dict)
    accepted: int = 0  # connections and UDP flows sent to an endpoint, for metrics

    def update(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.states = {b: self.states.get(b, EndpointState()) for b in frontend.backends}

    def candidates(self, client: str) -> list[Backend]:
        """Endpoints to try for a new connection from ``client``, best first."""
        backends = list(self.frontend.backends)
        if not backends:
            return []
        now = time.monotonic()
        if self.frontend.affinity is SessionAffinity.CLIENT_IP:
            pinned = self.affinity.get(client)
            if pinned and pinned[1] > now and pinned[0] in self.states:
                rest = [b for b in backends if b != pinned[0]]
                return [pinned[0], *rest]
        start = self.turn % len(backends)
        self.turn = start + 1
        ordered = backends[start:] + backends[:start]
        return [b for b in ordered if self.states[b].up] + [
            b for b in ordered if not self.states[b].up]  # all down: try them anyway

    def chose(self, client: str, backend: Backend) -> None:
        if self.frontend.affinity is SessionAffinity.CLIENT_IP:
            timeout = self.frontend.affinity_timeout
            self.affinity[client] = (backend, time.monotonic() + timeout)

    def prune_affinity(self, now: float) -> None:
        """Forget the clients whose affinity has timed out."""
        expired = [client for client, (_, until) in self.affinity.items() if until <= now]
        for client in expired:
            del self.affinity[client]


class UserspaceProxy:
    """Listeners kept in line with a VIP table (``apply``)."""

    def __init__(self) -> None:
        self.listeners: dict[tuple[str, int, Protocol], Listener] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def apply(self, frontends: list[Frontend], removed: set[tuple[str, int, Protocol]]
                    ) -> bool:
        """Listen on ``frontends`` (new or updated), stop listening on ``removed``; False when
        some could not be listened on (they are tried again on the next apply)."""
        served = True
        for address in removed:
            listener = self.listeners.pop(address, None)
            if listener is not None and listener.server is not None:
                listener.server.close()
        for frontend in frontends:
            listener = self.listeners.get(frontend.address)
            if listener is not None:
                listener.update(frontend)
                continue
            listener = Listener(frontend)
            listener.update(frontend)
            try:
                listener.server = await self._listen(listener)
            except OSError as error:
                log.warning("cannot listen on %s:%d/%s for service %s: %s", frontend.vip,
                            frontend.port, frontend.protocol.value, frontend.key,
                            error.strerror or error)
                served = False
                continue
            self.listeners[frontend.address] = listener
        return served

    def prune_affinity(self) -> None:
        now = time.monotonic()
        for listener in self.listeners.values():
            listener.prune_affinity(now)

    async def close(self) -> None:
        await self.apply([], set(self.listeners))
        for task in list(self._tasks):
            task.cancel()

    async def _listen(self, listener: Listener
                      ) -> asyncio.AbstractServer | asyncio.DatagramTransport:
        frontend = listener.frontend
        if frontend.protocol is Protocol.UDP:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpFrontend(listener), local_addr=(frontend.vip, frontend.port))
            return transport

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await _proxy_tcp(listener, reader, writer)
            finally:
                self._tasks.discard(task)

        return await asyncio.start_server(accept, frontend.vip, frontend.port,
                                          reuse_address=True)


async def _proxy_tcp(listener: Listener, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    client = writer.get_extra_info("peername")[0]
    for backend in listener.candidates(client):
        state = listener.states.get(backend)
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(backend.ip, backend.port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            if state is not None:
                state.failed()
            continue
        if state is not None:
            state.succeeded()
            state.connections += 1
        listener.chose(client, backend)
        listener.accepted += 1
        try:
            await _pipe_both(reader, writer, *upstream)
        finally:
            if state is not None:
                state.connections -= 1
        return
    writer.close()  # no endpoint took it: the client sees the connection closed


async def _pipe_both(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(PIPE_CHUNK):
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            pass

    try:
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
    finally:
        for stream in (writer, up_writer):
            stream.close()
            with contextlib.suppress(ConnectionError, OSError):
                await stream.wait_closed()


class _UdpFrontend(asyncio.DatagramProtocol):
    """UDP on a VIP:port: a flow per client address, each with its own upstream socket."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], _UdpFlow] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flow = self.flows.get(addr)
        if flow is not None:  # open, or still opening: then it sends the datagram once open
            flow.send(data)
            return
        candidates = self.listener.candidates(addr[0])
        if not candidates:
            return
        backend = candidates[0]
        self.listener.chose(addr[0], backend)
        flow = _UdpFlow(self, addr, backend, data)
        self.flows[addr] = flow
        asyncio.get_running_loop().create_task(flow.open())


class _UdpFlow(asyncio.DatagramProtocol):
    def __init__(self, frontend: _UdpFrontend, client: tuple[str, int], backend: Backend,
                 first: bytes) -> None:
        self.frontend, self.client, self.backend = frontend, client, backend
        self.pending = [first]
        self.transport: asyncio.DatagramTransport | None = None
        self.idle: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(
                lambda: self, remote_addr=(self.backend.ip, self.backend.port))
        except OSError:
            self.frontend.flows.pop(self.client, None)
            return
        state = self.frontend.listener.states.get(self.backend)
        self.frontend.listener.accepted += 1
        if state is not None:
            state.connections += 1
        for data in self.pending:
            self.send(data)
        self.pending = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._touch()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
            return
        self.transport.sendto(data)
        self._touch()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.frontend.transport is not None:
            self.frontend.transport.sendto(data, self.client)
        self._touch()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(UDP_IDLE_SECONDS, self.close)

    def close(self) -> None:
        self.frontend.flows.pop(self.client, None)
        state = self.frontend.listener.states.get(self.backend)
        if state is not None and self.transport is not None:
            state.connections -= 1
        if self.transport is not None:
            self.transport.close()
