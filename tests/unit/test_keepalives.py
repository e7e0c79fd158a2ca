"""The keepalive stream's HTTP/2 against h2's own server side, in-process: what a real etcd
cannot be made to do on cue (hold its flow-control window shut, end the stream with an error,
split a reply anywhere). tests/integration/test_etcd_keepalives.py runs it on a real etcd."""

from __future__ import annotations

import asyncio
import time

import aetcd.rpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from backends.keepalives import KeepAlives
from backends.linger import COMPANY, LINGER
from sdns.errors import BackendUnavailable

LEASE = 0x7587ABC1234  # a keepalive of it is a message of 13 bytes


class _Wire(asyncio.Transport):
    """Keeps what the client writes, for the server side to read."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


class _Etcd:
    """h2's server side of one connection, standing in for etcd."""

    def __init__(self, window: int) -> None:
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.wire = _Wire()
        self.client = KeepAlives("etcd:2379")
        self.client.connection_made(self.wire)
        self.received = b""
        self.frames = 0
        self.responded = False  # the reply's headers are sent
        self.exchange()

    def exchange(self) -> None:
        """Let each side read what the other wrote."""
        for _ in range(4):
            for event in self.h2.receive_data(bytes(self.wire.sent)):
                if isinstance(event, h2.events.DataReceived):
                    self.received += event.data
                    self.frames += 1
            self.wire.sent.clear()
            self.client.data_received(self.h2.data_to_send())

    async def receive(self, length: int) -> None:
        """Exchange until etcd has ``length`` bytes of keepalives (they linger first)."""
        deadline = time.monotonic() + 1
        while len(self.received) < length and time.monotonic() < deadline:
            await asyncio.sleep(LINGER / 4)
            self.exchange()

    def reply(self, ttls: list[int]) -> None:
        """A reply for each of ``ttls``, cut into DATA frames of 7 bytes, across messages."""
        if not self.responded:
            self.responded = True
            self.h2.send_headers(1, [(b":status", b"200"),
                                     (b"content-type", b"application/grpc")])
        bodies = [aetcd.rpc.LeaseKeepAliveResponse(ID=LEASE, TTL=ttl).SerializeToString()
                  for ttl in ttls]
        data = b"".join(b"\x00" + len(body).to_bytes(4, "big") + body for body in bodies)
        for start in range(0, len(data), 7):
            self.h2.send_data(1, data[start:start + 7])


async def test_keepalives_wait_for_the_window_and_replies_may_come_in_any_pieces() -> None:
    etcd = _Etcd(window=40)  # three keepalives and a byte of the fourth
    renewals = [etcd.client.renew(LEASE) for _ in range(5)]
    await etcd.receive(40)
    assert len(etcd.received) == 40
    etcd.h2.acknowledge_received_data(40, 1)  # etcd read them: the window opens again
    etcd.exchange()
    assert len(etcd.received) == 65
    etcd.reply([30, 31, 32, 33, 0])
    etcd.exchange()
    assert [r.result() for r in renewals] == [30, 31, 32, 33, 0]
    assert not etcd.client.closed


async def test_what_waited_for_the_window_leaves_in_frames_etcd_takes() -> None:
    etcd = _Etcd(window=40)
    renewals = [etcd.client.renew(LEASE) for _ in range(2000)]  # 26,000 bytes
    await etcd.receive(40)
    etcd.h2.increment_flow_control_window(100_000)  # the connection's window
    etcd.h2.increment_flow_control_window(100_000, 1)  # and the stream's
    etcd.exchange()  # h2 refuses a frame over 16,384 bytes, the largest etcd takes
    assert len(etcd.received) == 26_000
    etcd.reply([30] * 2000)
    etcd.exchange()
    assert {r.result() for r in renewals} == {30}


async def test_an_error_from_etcd_ends_the_stream_and_fails_what_waits() -> None:
    etcd = _Etcd(window=65535)
    waiting = etcd.client.renew(LEASE)
    await etcd.receive(13)
    etcd.h2.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                             (b"grpc-status", b"14"),
                             (b"grpc-message", b"etcdserver: no leader")], end_stream=True)
    etcd.exchange()
    with pytest.raises(BackendUnavailable, match="no leader"):
        waiting.result()
    assert etcd.client.closed and etcd.wire.closed
    with pytest.raises(BackendUnavailable):
        etcd.client.renew(LEASE)


async def test_a_keepalive_lingers_for_company_and_they_leave_in_one_frame() -> None:
    etcd = _Etcd(window=65535)
    started = time.monotonic()
    lingering = [etcd.client.renew(LEASE) for _ in range(3)]
    etcd.exchange()
    assert etcd.received == b""
    await etcd.receive(39)
    assert time.monotonic() - started >= LINGER * 0.9  # the loop's clock is coarse
    assert (len(etcd.received), etcd.frames) == (39, 1)
    company = [etcd.client.renew(LEASE) for _ in range(COMPANY)]
    etcd.exchange()  # enough of them: they leave at once
    assert (len(etcd.received), etcd.frames) == (39 + 13 * COMPANY, 2)
    etcd.reply([30] * (3 + COMPANY))
    etcd.exchange()
    assert [r.result() for r in lingering + company] == [30] * (3 + COMPANY)


async def test_keepalives_sent_one_after_another_s_answer_stop_waiting_for_company() -> None:
    etcd = _Etcd(window=65535)
    first = etcd.client.renew(LEASE)
    await etcd.receive(13)  # it waited LINGER, alone
    etcd.reply([30])
    etcd.exchange()
    assert first.result() == 30
    second = etcd.client.renew(LEASE)  # the renewer waited for the answer: no company comes
    etcd.exchange()
    assert len(etcd.received) == 26
    third = etcd.client.renew(LEASE)  # while the second has no answer: renewers overlap
    etcd.exchange()
    assert len(etcd.received) == 26
    await etcd.receive(39)
    etcd.reply([31, 32])
    etcd.exchange()
    assert (second.result(), third.result()) == (31, 32)
