"""Renewals answered on their connection, without aiohttp's machinery for each request.

Lease renewals and heartbeats are most of what the API is asked under churn, and they share
the core that answers DNS. aiohttp spends about 230 us of Python on each request here (a
bare route on uvloop, 300 requests a second), against about 20 us for a protocol that reads
the request line and headers itself. Answered here, a heartbeat costs sdns 44 us of CPU on the
memory backend instead of 96 us, and heartbeats per second rose from 10,600 to 23,000 (etcd:
3,100 to 3,700; ZooKeeper: 3,600 to 5,300; docs/PERFORMANCE.md).

So a connection starts here. While every request on it is a plain renewal (``POST`` of a
lease's ``/renew`` or an endpoint's ``/heartbeat``, HTTP/1.1, no body, no escapes or query in
the path), it is answered here, through the same functions, token check and JSON errors as
the API's routes. At the first request of any other kind, the connection is handed to
aiohttp for good, with everything it has sent so far, before anything of that request is
answered.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import logging
import re
import time
from typing import Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from sdns.api import app as api
from sdns.errors import SdnsError

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 75.0  # an idle connection is closed after this, here as in aiohttp
HEAD_LIMIT = 8190  # the longest request head read here (aiohttp's own limit for a line)
# method, path and version of a plain renewal; other characters are aiohttp's to refuse
_ROUTE = re.compile(rb"POST (/v1/(?:leases/([0-9a-z]+)/renew|services/([0-9a-z-]+)/"
                    rb"([0-9a-z-]+)/endpoints/([0-9a-z-]+)/heartbeat)) HTTP/1\.1")
# headers that mean a body, or a protocol other than plain HTTP/1.1, follow
_NOT_PLAIN = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
_CREDENTIALS = {b"authorization": "Authorization", b"x-sdns-token": "X-Sdns-Token"}

_CHALLENGE = b"WWW-Authenticate: %s\r\n" % api.CHALLENGE.encode()


class _Date:
    """The Date header's value, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._text = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = email.utils.formatdate(second, usegmt=True).encode()
        return self._text


_DATE = _Date()
_SERVER = SERVER_SOFTWARE.encode()  # aiohttp's Server header, as its own replies carry


def reply(status: int, body: dict[str, Any], close: bool, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response with a JSON body, headed as aiohttp heads its own."""
    payload = json.dumps(body).encode()
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode()),
        b"Content-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n"
        % len(payload),
        b"Date: %s\r\nServer: %s\r\n" % (_DATE.now(), _SERVER),
        b"Connection: close\r\n" if close else b"",
        extra, b"\r\n", payload))


class RenewalConnection(asyncio.Protocol):
    """One client connection: renewals answered here, the rest handed to aiohttp."""

    def __init__(self, app: web.Application, server: web.Server,
                 connections: set[RenewalConnection]) -> None:
        self._app = app
        self._server = server  # aiohttp's protocol factory, for the hand-over
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False  # a renewal is being answered: what follows waits for it
        self._ended = False  # the client sent EOF
        self._idle: asyncio.TimerHandle | None = None
        self._paused = False
        self._answering: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._connections.add(self)
        self._idle_from_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next()
        else:
            self._hold_back()

    def eof_received(self) -> bool:
        self._ended = True
        if not self._busy:
            self._next()
        return True  # the reply to a request still being answered goes out first

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._answering is not None and self._answering is not asyncio.current_task():
            self._answering.cancel()
        self._forget()

    def _forget(self) -> None:
        self._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _hold_back(self) -> None:
        """Stop reading from a client far ahead of its replies, until one is answered."""
        if len(self._buffer) > HEAD_LIMIT and not self._paused:
            self._transport.pause_reading()
            self._paused = True

    def _idle_from_now(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(KEEPALIVE_SECONDS, self.close)

    def _next(self) -> None:
        """Answer the next request in the buffer if it is a plain renewal, hand the connection
        over if it is anything else, or wait for the rest of its head."""
        end = self._buffer.find(b"\r\n\r\n", 0, HEAD_LIMIT + 4)
        if end < 0:
            if len(self._buffer) > HEAD_LIMIT:
                self._hand_over()
            elif self._ended:
                self.close()
            return
        read = plain_renewal(bytes(self._buffer[:end]))
        if read is None:
            self._hand_over()
            return
        del self._buffer[:end + 4]
        self._busy = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._hold_back()
        self._answering = asyncio.get_running_loop().create_task(self._answer(*read))

    async def _answer(self, groups: tuple[bytes | None, ...], credentials: dict[str, str],
                      close: bool) -> None:
        """Renew, and write the reply (then go on with what the client sent meanwhile)."""
        path, lease, namespace, name, endpoint = (
            None if group is None else group.decode() for group in groups)
        registry = self._app[api.REGISTRY]
        try:
            api.check_token(self._app, "POST", path, namespace, api.presented(credentials))
            if lease is not None:
                body = await api.renewed(registry, lease)
            else:
                body = await api.heartbeaten(registry, namespace, name, endpoint)
            response = reply(200, body, close)
        except SdnsError as error:
            extra = _CHALLENGE if error.status == 401 else b""
            response = reply(error.status, error.to_json(), close, extra)
        except Exception:  # a bug: the client hears 500, as from aiohttp
            log.exception("failed to answer %s", path)
            response = reply(500, {"error": "internal server error"}, close)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(response)
        self._busy, self._answering = False, None
        if close:
            self.close()
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if self._buffer:
            self._next()
        elif self._ended:
            self.close()
        else:
            self._idle_from_now()

    def _hand_over(self) -> None:
        """From now on aiohttp serves this connection, starting with what is buffered."""
        self._forget()
        transport, self._transport = self._transport, None
        handler = self._server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._buffer:
            handler.data_received(bytes(self._buffer))
        if self._ended:
            handler.eof_received()


def plain_renewal(head: bytes) -> tuple[tuple[bytes | None, ...], dict[str, str], bool] | None:
    """The route's groups, the credentials presented and whether the client asks to close, if
    ``head`` (without its final blank line) is a plain renewal; None if it is not."""
    line, _, fields = head.partition(b"\r\n")
    route = _ROUTE.fullmatch(line)
    if route is None:
        return None
    credentials: dict[str, str] = {}
    close = sized = False
    for field in fields.split(b"\r\n") if fields else ():
        name, colon, value = field.partition(b":")
        if not colon or not name or b" " in name or b"\t" in name or b"\n" in value \
                or b"\r" in value or b"\0" in value:
            return None  # malformed: aiohttp says how
        name, value = name.lower(), value.strip(b" \t")
        if name in _NOT_PLAIN:
            if name != b"content-length" or value != b"0" or sized:
                return None
            sized = True
        elif name == b"connection":
            close = b"close" in value.lower()
        elif name in _CREDENTIALS:
            if _CREDENTIALS[name] in credentials:
                return None
            credentials[_CREDENTIALS[name]] = value.decode("latin-1")
    return route.groups(), credentials, close


class Listener:
    """The API's listening socket, with the connections still served here."""

    def __init__(self, server: asyncio.AbstractServer,
                 connections: set[RenewalConnection]) -> None:
        self.server = server
        self._connections = connections

    async def close(self) -> None:
        """Stop listening and close the connections still here; aiohttp's runner closes
        those handed to it (``wait_closed`` would wait for them too)."""
        self.server.close()
        for connection in list(self._connections):
            connection.close()


async def listen(app: web.Application, server: web.Server, host: str, port: int) -> Listener:
    """Serve ``app`` on ``host``:``port``, plain renewals here and the rest through aiohttp's
    ``server`` (an AppRunner's)."""
    connections: set[RenewalConnection] = set()
    listening = await asyncio.get_running_loop().create_server(
        lambda: RenewalConnection(app, server, connections), host, port)
    return Listener(listening, connections)
