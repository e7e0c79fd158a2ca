"""recvmmsg/sendmmsg batches on real loopback sockets, and the UDP server on both of its paths
(a batch per system call, and one datagram at a time)."""

from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.rcode
import pytest

from sdns.config import HostPort
from sdns.dns import datagrams
from sdns.dns.responder import Responder
from sdns.dns.server import DnsServer
from sdns.dns.zone import Zone
from sdns.view import View
from tests.helpers.support import free_port

pytestmark = pytest.mark.skipif(not datagrams.AVAILABLE, reason="no recvmmsg in this libc")


@pytest.fixture(params=[(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")],
                ids=["ipv4", "ipv6"])
def pair(request: pytest.FixtureRequest):
    family, host = request.param
    server, client = socket.socket(family, socket.SOCK_DGRAM), socket.socket(
        family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    client.bind((host, 0))
    client.settimeout(2)
    yield server, client
    server.close()
    client.close()


def test_a_batch_takes_what_waits_up_to_its_size(pair) -> None:
    server, client = pair
    for i in range(70):
        client.sendto(b"q%d" % i, server.getsockname())
    batch = datagrams.Datagrams(server, batch=64)
    first = batch.receive()
    assert first == [b"q%d" % i for i in range(64)]
    assert batch.sender(63) == client.getsockname()
    assert batch.receive() == [b"q%d" % i for i in range(64, 70)]


def test_replies_go_to_their_senders_and_none_sends_nothing(pair) -> None:
    server, client = pair
    other = socket.socket(server.family, socket.SOCK_DGRAM)
    other.bind((server.getsockname()[0], 0))
    other.settimeout(2)
    client.sendto(b"a", server.getsockname())
    other.sendto(b"b", server.getsockname())
    client.sendto(b"c", server.getsockname())
    batch = datagrams.Datagrams(server)
    received = batch.receive()
    assert received == [b"a", b"b", b"c"]
    batch.send([b"A", b"B", None])
    assert client.recvfrom(100)[0] == b"A"
    assert other.recvfrom(100)[0] == b"B"
    client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.recvfrom(100)
    other.close()


def test_replies_around_gaps_go_out_in_order(pair) -> None:
    server, client = pair
    for i in range(6):
        client.sendto(b"q%d" % i, server.getsockname())
    batch = datagrams.Datagrams(server)
    assert len(batch.receive()) == 6
    batch.send([None, b"r1", None, b"r3", b"r4", None])
    assert [client.recvfrom(100)[0] for _ in range(3)] == [b"r1", b"r3", b"r4"]
    client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.recvfrom(100)


def test_large_datagrams_are_neither_cut_nor_refused(pair) -> None:
    server, client = pair
    client.sendto(b"x" * 60_000, server.getsockname())
    batch = datagrams.Datagrams(server)
    assert batch.receive() == [b"x" * 60_000]
    batch.send([b"y" * 9_000])
    assert client.recvfrom(10_000)[0] == b"y" * 9_000


@pytest.mark.parametrize("batched", [True, False], ids=["batches", "one-by-one"])
async def test_the_udp_server_answers_a_burst_on_either_path(batched: bool) -> None:
    server = DnsServer(Responder(Zone("cluster.local", 5, View()), 1 << 20), batched=batched)
    port = free_port()
    await server.start(HostPort("127.0.0.1", port))
    try:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(client, ("127.0.0.1", port))
        for _ in range(3):  # the second and third are answered from the cache
            queries = [dns.message.make_query(f"nx-{i}.default.svc.cluster.local", "A",
                                              id=i) for i in range(100)]
            for query in queries:  # many wait in the socket at once
                client.send(query.to_wire())
            replies = {}
            async with asyncio.timeout(10):
                while len(replies) < len(queries):
                    reply = dns.message.from_wire(await loop.sock_recv(client, 4096))
                    replies[reply.id] = reply
            for query in queries:
                reply = replies[query.id]
                assert reply.question == query.question
                assert reply.rcode() == dns.rcode.NXDOMAIN
        client.close()
    finally:
        await server.close()


@pytest.mark.parametrize("batched", [True, False], ids=["batches", "one-by-one"])
async def test_a_failure_answering_from_the_cache_spares_the_other_queries(
        batched: bool) -> None:
    responder = Responder(Zone("cluster.local", 5, View()), 1 << 20)
    cached = responder.cached_reply

    def failing(data: bytes) -> bytes | None:
        if b"\x04boom" in data:
            raise RuntimeError("a bug in the hot path")
        return cached(data)

    responder.cached_reply = failing  # type: ignore[method-assign]
    server = DnsServer(responder, batched=batched)
    port = free_port()
    await server.start(HostPort("127.0.0.1", port))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            names = ["boom.default.svc.cluster.local", "nx.default.svc.cluster.local"]
            for i, name in enumerate(names):  # back to back: often one batch
                client.sendto(dns.message.make_query(name, "A", id=i).to_wire(),
                              ("127.0.0.1", port))
            replies = [await asyncio.to_thread(client.recv, 4096) for _ in names]
        # the failing query is answered on the loop's path instead
        assert sorted((m.id, m.rcode()) for m in map(dns.message.from_wire, replies)) == [
            (0, dns.rcode.NXDOMAIN), (1, dns.rcode.NXDOMAIN)]
    finally:
        await server.close()
