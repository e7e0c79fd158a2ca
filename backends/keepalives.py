"""etcd's LeaseKeepAlive stream, on an HTTP/2 connection of its own that the event loop drives
with h2, where the rest of the etcd backend goes through gRPC (aetcd).

Every lease renewal is one message each way on this stream. Through gRPC's asyncio API each
message is a batch operation whose completion gRPC's poller thread hands to the loop, and
a renewal cost sdns about 145 us of CPU (6,600 renewals/s on one core, etcd on the other).
Here a message is a frame written to the socket and a frame parsed from it: about 45 us, and
etcd becomes the limit at 15,000 to 20,000 renewals/s. Heartbeats through the API went from
about 3,000/s to 6,200-7,700/s (measurements in docs/PERFORMANCE.md). Keepalives linger for
company (backends/linger.py) and leave together in one frame.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import aetcd.rpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions

from backends.linger import Linger
from sdns.errors import BackendUnavailable
from sdns.tasks import settle

_PATH = b"/etcdserverpb.Lease/LeaseKeepAlive"
_ENDINGS = (h2.events.StreamEnded, h2.events.StreamReset, h2.events.TrailersReceived,
            h2.events.ConnectionTerminated)


class KeepAlives(asyncio.Protocol):
    """One LeaseKeepAlive stream to ``endpoint``. ``renew`` sends a keepalive and answers the
    TTL etcd replies with (0 or less when the lease is gone). When the connection or the
    stream ends, every renewal waiting fails and ``closed`` turns true."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.closed = False
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self._transport: asyncio.Transport | None = None
        self._stream = 0
        self._unsent = b""  # what etcd's flow-control window does not take yet
        self._lingering: list[bytes] = []  # keepalives waiting for company
        self._unanswered = 0  # keepalives sent that have no reply yet
        self._linger = Linger(self._leave)
        self._received = b""  # the start of a message whose end is still to come
        self._waiting: dict[int, deque[asyncio.Future[int]]] = {}

    @classmethod
    async def open(cls, endpoints: list[str], timeout: float) -> KeepAlives:
        """A stream to the first of ``endpoints`` ("host:port", "[v6]:port") that takes a
        connection within ``timeout``."""
        loop = asyncio.get_running_loop()
        refused = []
        for endpoint in endpoints:
            host, _, port = endpoint.rpartition(":")
            try:
                _, stream = await asyncio.wait_for(loop.create_connection(
                    lambda e=endpoint: cls(e), host.strip("[]"), int(port)), timeout)
            except (OSError, TimeoutError) as error:
                refused.append(f"{endpoint}: {error or 'no answer'}")
                continue
            return stream
        raise BackendUnavailable(f"etcd: no keepalive stream ({'; '.join(refused)})")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._h2.initiate_connection()
        self._stream = self._h2.get_next_available_stream_id()
        self._h2.send_headers(self._stream, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", _PATH),
            (b":authority", self.endpoint.encode()), (b"content-type", b"application/grpc"),
            (b"te", b"trailers")])
        self._transport.write(self._h2.data_to_send())

    def renew(self, lease: int) -> asyncio.Future[int]:
        if self.closed:
            raise BackendUnavailable("etcd: the keepalive stream ended")
        body = aetcd.rpc.LeaseKeepAliveRequest(ID=lease).SerializeToString()
        answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(lease, deque()).append(answered)
        self._lingering.append(b"\x00" + len(body).to_bytes(4, "big") + body)  # a gRPC message
        if self._unanswered:
            self._linger.overlapped()
        self._linger.came(len(self._lingering))
        return answered

    def _leave(self) -> None:
        messages, self._lingering = self._lingering, []
        self._unanswered += len(messages)
        self._send(b"".join(messages))

    def _send(self, data: bytes) -> None:
        """Send ``data`` after what waits already, as far as etcd's flow-control window
        allows, in frames no larger than it takes; the rest waits for the window to open."""
        unsent = self._unsent + data
        while size := min(len(unsent), self._h2.local_flow_control_window(self._stream),
                          self._h2.max_outbound_frame_size):
            self._h2.send_data(self._stream, unsent[:size])
            unsent = unsent[size:]
        self._unsent = unsent
        self._flush()

    def _flush(self) -> None:
        if (pending := self._h2.data_to_send()) and self._transport is not None:
            self._transport.write(pending)

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self.end(f"etcd: the keepalive stream broke ({error})")
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id == self._stream:
                self._h2.acknowledge_received_data(event.flow_controlled_length, self._stream)
                self._replies(event.data)
            elif isinstance(event, h2.events.WindowUpdated) and self._unsent:
                self._send(b"")
            elif isinstance(event, _ENDINGS) or (isinstance(event, h2.events.ResponseReceived)
                                                 and _status(event) != b"0"):
                self.end(f"etcd: the keepalive stream ended ({_reason(event)})")
                return
        self._flush()  # what h2 owes etcd: window updates, ping and settings acknowledgements

    def _replies(self, data: bytes) -> None:
        """Hand each whole reply to the renewal of its lease that waited longest (etcd answers
        a stream in order)."""
        received = self._received + data
        start = 0
        while len(received) - start >= 5:
            end = start + 5 + int.from_bytes(received[start + 1:start + 5], "big")
            if end > len(received):
                break
            reply = aetcd.rpc.LeaseKeepAliveResponse.FromString(received[start + 5:end])
            start = end
            self._unanswered -= 1
            waiting = self._waiting.get(reply.ID)
            if waiting:
                settle(waiting.popleft(), reply.TTL)
                if not waiting:
                    del self._waiting[reply.ID]
        self._received = received[start:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.end(f"etcd: the keepalive connection was lost ({exc or 'closed by etcd'})")

    def end(self, reason: str) -> None:
        """Close the stream; every renewal waiting hears ``reason``."""
        self.closed = True
        self._linger.cancel()
        if self._transport is not None:
            self._transport.close()
        for waiting in self._waiting.values():
            for answered in waiting:
                settle(answered, 0, BackendUnavailable(reason))
        self._waiting.clear()


def _status(event: h2.events.ResponseReceived) -> bytes:
    """The gRPC status in a reply's headers: b"0" unless the reply is only headers, the form
    of an error that ends the stream at once."""
    return dict(event.headers or ()).get(b"grpc-status", b"0")


def _reason(event: h2.events.Event) -> str:
    headers = dict(getattr(event, "headers", None) or ())
    if b"grpc-status" in headers:
        return (headers.get(b"grpc-message") or b"status " + headers[b"grpc-status"]).decode()
    return type(event).__name__
