"""DNS over UDP and TCP (RFC 1035, RFC 7766) in front of a ``Responder``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from sdns.config import HostPort
from sdns.dns.responder import Responder

log = logging.getLogger(__name__)

TCP_IDLE_SECONDS = 10.0


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self.reply = responder.reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.reply(data, True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


def _bound_udp_socket(address: HostPort) -> socket.socket:
    """Bound here rather than by the loop so that a failure keeps its errno."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class DnsServer:
    """Listens on one address over both UDP and TCP."""

    def __init__(self, responder: Responder, idle_seconds: float = TCP_IDLE_SECONDS) -> None:
        self.responder = responder
        self.idle_seconds = idle_seconds
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, address: HostPort) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self.responder), sock=_bound_udp_socket(address))
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, address.host, address.port,
                                                   reuse_address=True)
        except OSError:
            self._udp.close()
            raise

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._connections):
                task.cancel()
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                prefix = await asyncio.wait_for(reader.readexactly(2), self.idle_seconds)
                length = int.from_bytes(prefix, "big")
                message = await asyncio.wait_for(reader.readexactly(length), self.idle_seconds)
                reply = self.responder.reply(message, False)
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
