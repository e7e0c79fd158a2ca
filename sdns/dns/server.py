"""DNS over UDP and TCP (RFC 1035, RFC 7766) in front of a ``Responder``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time

from sdns.config import HostPort
from sdns.dns import datagrams, wire
from sdns.dns.querylog import QueryLog
from sdns.dns.responder import Responder
from sdns.dns.tally import Tally

log = logging.getLogger(__name__)

TCP_IDLE_SECONDS = 10.0


def _replied(tally: Tally, querylog: QueryLog | None, proto: str, client: object, data: bytes,
             reply: bytes, start: float) -> None:
    """Count how long a reply sent one by one took since ``start``, and log it when queries
    are logged."""
    elapsed = time.perf_counter() - start
    tally.took(elapsed)
    if querylog is not None:
        querylog.record(proto, client, data, reply, elapsed)


class _UdpServer:
    """UDP on a thread of its own, blocked in the kernel: a cached answer goes straight back
    from there, which costs less per packet than a trip through the event loop, and the
    datagrams waiting are taken and answered a batch per system call where the platform has
    one (``datagrams``). Anything else (a miss, an error reply) is handed to the loop, which
    owns the zone data."""

    def __init__(self, sock: socket.socket, responder: Responder,
                 loop: asyncio.AbstractEventLoop, batched: bool,
                 querylog: QueryLog | None) -> None:
        self.sock = sock
        self.responder = responder
        self.querylog = querylog
        self.loop = loop
        self._stopping = False
        self._forwarding: set[asyncio.Task[None]] = set()
        serve = self._serve_batches if batched else self._serve_one_by_one
        self._thread = threading.Thread(target=serve, name="sdns-udp", daemon=True)
        self._thread.start()

    def _serve_batches(self) -> None:
        batch = datagrams.Datagrams(self.sock)
        cached, call_soon = self.responder.cached_reply, self.loop.call_soon_threadsafe
        took = self.responder.tallies.udp_thread.took
        while not self._stopping:
            try:
                received = batch.receive()
                start = time.perf_counter()
                try:
                    replies = [cached(data) for data in received]
                except Exception:  # a bug: find the query that hits it, and spare the others
                    replies = [self._cached(data) for data in received]
                answered = len(replies)
                if None in replies:
                    for i, reply in enumerate(replies):
                        if reply is None:
                            answered -= 1
                            call_soon(self._answer, received[i], batch.sender(i), start)
                batch.send(replies)
                elapsed = time.perf_counter() - start
                took(elapsed, answered)  # each as long as the batch
                if self.querylog is not None:
                    for i, reply in enumerate(replies):
                        if reply is not None:
                            self.querylog.record("udp", batch.sender(i), received[i], reply,
                                                 elapsed)
            except Exception as error:
                if self._ends_on(error):
                    return

    def _serve_one_by_one(self) -> None:
        receive, send = self.sock.recvfrom, self.sock.sendto
        cached, call_soon = self._cached, self.loop.call_soon_threadsafe
        udp_thread = self.responder.tallies.udp_thread
        while not self._stopping:
            try:
                data, addr = receive(65535)
                start = time.perf_counter()
                reply = cached(data)
                if reply is None:
                    call_soon(self._answer, data, addr, start)
                else:
                    send(reply, addr)
                    _replied(udp_thread, self.querylog, "udp", addr, data, reply, start)
            except Exception as error:
                if self._ends_on(error):
                    return

    def _cached(self, data: bytes) -> bytes | None:
        """The cached reply, or None for the loop to answer: on a miss, and when answering from
        the cache fails (a bug), so that the loop's own path answers it (SERVFAIL at worst)."""
        try:
            return self.responder.cached_reply(data)
        except Exception:
            log.exception("failed to answer a query from the cache; the loop answers it")
            return None

    def _ends_on(self, error: Exception) -> bool:
        """Whether the thread ends after ``error``: only when stopping. Anything else is logged
        and served past, since this thread is all of DNS over UDP."""
        if self._stopping:
            return True
        if isinstance(error, OSError):
            log.debug("UDP error: %s", error)
        else:
            log.error("failed to send UDP replies; they go unanswered", exc_info=error)
        return False

    def _answer(self, data: bytes, addr: tuple[str, int], start: float) -> None:
        reply = self.responder.reply(data, True)
        if isinstance(reply, wire.Query):
            task = self.loop.create_task(self._forward(data, reply, addr, start))
            self._forwarding.add(task)
            task.add_done_callback(self._forwarding.discard)
        elif reply is not None:
            self._send(data, reply, addr, start)

    async def _forward(self, data: bytes, query: wire.Query, addr: tuple[str, int],
                       start: float) -> None:
        self._send(data, await self.responder.forward(data, query, True, addr[0]), addr, start)

    def _send(self, data: bytes, reply: bytes, addr: tuple[str, int], start: float) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(reply, addr)
        _replied(self.responder.tallies.udp_loop, self.querylog, "udp", addr, data, reply, start)

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):  # wake the thread from recvfrom
            wake = socket.socket(self.sock.family, socket.SOCK_DGRAM)
            wake.sendto(b"", self.sock.getsockname())
            wake.close()
        self._thread.join(2)
        self.sock.close()


def _bound_udp_socket(address: HostPort, shared: bool) -> socket.socket:
    """A blocking socket for the UDP thread, bound here so that a failure keeps its errno."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


class DnsServer:
    """Listens on one address over both UDP and TCP."""

    def __init__(self, responder: Responder, idle_seconds: float = TCP_IDLE_SECONDS,
                 shared_port: bool = False, batched: bool = datagrams.AVAILABLE,
                 querylog: QueryLog | None = None) -> None:
        self.responder = responder
        self.querylog = querylog
        self.shared_port = shared_port  # other processes serve the same port (SO_REUSEPORT)
        self.batched = batched  # UDP through recvmmsg/sendmmsg
        self.idle_seconds = idle_seconds
        self._udp: _UdpServer | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, address: HostPort) -> None:
        sock = _bound_udp_socket(address, self.shared_port)
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, address.host, address.port,
                                                   reuse_address=True,
                                                   reuse_port=self.shared_port or None)
        except OSError:
            sock.close()
            raise
        self._udp = _UdpServer(sock, self.responder, asyncio.get_running_loop(), self.batched,
                               self.querylog)

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
                start = time.perf_counter()
                reply = self.responder.reply(message, False)
                if isinstance(reply, wire.Query):
                    peer = writer.get_extra_info("peername")
                    reply = await self.responder.forward(message, reply, False, peer[0])
                elif reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                _replied(self.responder.tallies.tcp, self.querylog, "tcp",
                         writer.get_extra_info("peername"), message, reply, start)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
