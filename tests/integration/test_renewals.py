"""Renewals answered on their connection (sdns/api/renewals.py) against a real sdns: the same
answers as aiohttp's routes give, in order, with pipelining, half-closed and closing
connections, tokens, and a connection handed to aiohttp at its first other request."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from sdns.api.renewals import plain_renewal
from tests.helpers.support import Api, SdnsProcess
from tests.integration.test_tokens import ADMIN, READER, TOKENS


def _request(method: str, path: str, headers: str = "", body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method != "GET" else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: sdns\r\n{length}{headers}\r\n").encode() + body


def _replies(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], object]]:
    """``count`` responses read off ``sock``: status, headers (lowercase names), and the body
    (decoded if JSON)."""
    data, replies = b"", []
    while len(replies) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            lines = data[:head_end].decode("latin-1").split("\r\n")
            headers = {name.lower(): value.strip() for name, _, value in
                       (line.partition(":") for line in lines[1:])}
            end = head_end + 4 + int(headers["content-length"])
            if len(data) >= end:
                body = data[head_end + 4:end]
                is_json = headers.get("content-type", "").startswith("application/json")
                replies.append((int(lines[0].split()[1]), headers,
                                json.loads(body) if is_json else body))
                data = data[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(replies)} of {count} replies"
        data += chunk
    return replies


def _connect(process: SdnsProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", process.api_port), timeout=10)
    return sock


def _exchange(process: SdnsProcess, *requests: bytes, handed_over: bool = False
              ) -> list[tuple[int, dict[str, str], object]]:
    """The replies to ``requests`` sent on one connection, one write each; with
    ``handed_over``, after a first GET that leaves the connection to aiohttp."""
    with _connect(process) as sock:
        if handed_over:
            sock.sendall(_request("GET", "/healthz"))
            assert _replies(sock, 1)[0][0] == 200
        replies = []
        for request in requests:
            sock.sendall(request)
            replies += _replies(sock, 1)
        return replies


def _closed(sock: socket.socket) -> bool:
    return sock.recv(1) == b""


@pytest.fixture(scope="module")
def server() -> SdnsProcess:
    process = SdnsProcess().start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def lease(server: SdnsProcess) -> str:
    made = server.api.post("/v1/leases", {"ttl": 60})
    assert made.status == 201
    for i, ttl in ((1, None), (2, 60)):
        body = {"ip": f"10.77.0.{i}", **({"ttl": ttl} if ttl else {})}
        assert server.api.put(f"/v1/services/renewals/web/endpoints/e{i}", body).status == 201
    return made.body["id"]


@pytest.mark.parametrize("path", [
    "/v1/leases/{lease}/renew",
    "/v1/leases/ffff/renew",  # unknown: 404
    "/v1/leases/" + "f" * 33 + "/renew",  # not a lease id: 400 naming it
    "/v1/services/renewals/web/endpoints/e1/heartbeat",  # no ttl: 200, unchanged
    "/v1/services/renewals/web/endpoints/e2/heartbeat",
    "/v1/services/renewals/web/endpoints/e9/heartbeat",  # 404
    "/v1/services/renewals/" + "w" * 64 + "/endpoints/e1/heartbeat",  # 400 naming the name
])
def test_a_renewal_is_answered_as_aiohttps_route_answers_it(server: SdnsProcess, lease: str,
                                                             path: str) -> None:
    request = _request("POST", path.format(lease=lease))
    here, = _exchange(server, request)
    there, = _exchange(server, request, handed_over=True)
    assert here[0] == there[0]
    assert here[0] in (200, 400, 404)
    assert here[1]["content-type"] == there[1]["content-type"] == \
        "application/json; charset=utf-8"
    assert here[1]["server"] == there[1]["server"]
    assert set(here[1]) == set(there[1])  # the same headers: Date, Server, ...
    stamps = here[2].pop("expiresAt", None), there[2].pop("expiresAt", None)
    assert stamps == (None, None) if None in stamps else stamps[0] <= stamps[1]
    assert here[2] == there[2]
    if here[0] == 400:
        assert here[2]["field"] in ("id", "name")


def test_pipelined_requests_are_answered_in_order_across_the_hand_over(server: SdnsProcess,
                                                                      lease: str) -> None:
    renew = _request("POST", f"/v1/leases/{lease}/renew")
    with _connect(server) as sock:
        sock.sendall(renew + _request("POST", "/v1/leases/ffff/renew") + renew +
                     _request("GET", f"/v1/leases/{lease}") + renew)
        replies = _replies(sock, 5)
    assert [status for status, _, _ in replies] == [200, 404, 200, 200, 200]
    assert replies[3][2]["endpoints"] == 0  # the GET, answered by aiohttp
    stamps = [body["expiresAt"] for status, _, body in replies if status == 200]
    assert stamps == sorted(stamps)


def test_a_client_far_ahead_of_its_replies_gets_them_all(server: SdnsProcess,
                                                        lease: str) -> None:
    renew = _request("POST", f"/v1/leases/{lease}/renew")
    count = 3 * 8190 // len(renew)  # three times what is read ahead before reading pauses
    with _connect(server) as sock:
        sock.sendall(renew * count)
        assert [status for status, _, _ in _replies(sock, count)] == [200] * count
        sock.sendall(renew)  # read once the replies are out: reading goes on
        assert _replies(sock, 1)[0][0] == 200


def test_a_request_split_over_many_writes_is_answered(server: SdnsProcess, lease: str) -> None:
    request = _request("POST", f"/v1/leases/{lease}/renew")
    with _connect(server) as sock:
        for i in range(0, len(request), 7):
            sock.sendall(request[i:i + 7])
        assert _replies(sock, 1)[0][0] == 200


def test_renewals_with_a_body_or_of_http_1_0_go_to_aiohttp(server: SdnsProcess,
                                                          lease: str) -> None:
    path = f"/v1/leases/{lease}/renew"
    with_body = _request("POST", path, "Content-Type: application/json\r\n", b"{}")
    assert _exchange(server, with_body, with_body)[1][0] == 200
    with _connect(server) as sock:
        sock.sendall(f"POST {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
        assert _replies(sock, 1)[0][0] == 200
    with _connect(server) as sock:  # a folded header line: aiohttp refuses it
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: sdns\r\n x\r\n\r\n".encode())
        assert _replies(sock, 1)[0][0] == 400


def test_connection_close_and_a_half_closed_client_get_their_reply(server: SdnsProcess,
                                                                   lease: str) -> None:
    path = f"/v1/leases/{lease}/renew"
    with _connect(server) as sock:
        sock.sendall(_request("POST", path, "Connection: close\r\n"))
        status, headers, _ = _replies(sock, 1)[0]
        assert (status, headers["connection"]) == (200, "close")
        assert _closed(sock)
    with _connect(server) as sock:
        sock.sendall(_request("POST", path) * 2)
        sock.shutdown(socket.SHUT_WR)
        assert [status for status, _, _ in _replies(sock, 2)] == [200, 200]
        assert _closed(sock)


@pytest.mark.parametrize("writes", [1, 3])
def test_a_head_longer_than_the_limit_is_left_to_aiohttp(server: SdnsProcess, lease: str,
                                                         writes: int) -> None:
    request = (f"POST /v1/leases/{lease}/renew HTTP/1.1\r\nX-Long: ".encode() + b"a" * 20000 +
               b"\r\n\r\n")
    with _connect(server) as sock:
        size = -(-len(request) // writes)
        for i in range(0, len(request), size):
            sock.sendall(request[i:i + size])
        here = _replies(sock, 1)[0]
    there = _exchange(server, request, handed_over=True)[0]
    assert here[0] == there[0] == 400
    assert here[2] == there[2]


def test_renewals_need_a_token_that_may_write(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    process = SdnsProcess("--tokens", str(tokens)).start()
    try:
        made = Api(process.api.base, ADMIN).post("/v1/leases", {"ttl": 60})
        path = f"/v1/leases/{made.body['id']}/renew"
        for headers, status in [("", 401), (f"Authorization: Bearer {READER}\r\n", 403),
                                ("Authorization: Bearer wrong\r\n", 401),
                                (f"X-Sdns-Token: {ADMIN}\r\n", 200),
                                (f"Authorization: bearer {ADMIN}\r\n", 200)]:
            for handed_over in (False, True):
                reply, = _exchange(process, _request("POST", path, headers),
                                   handed_over=handed_over)
                assert reply[0] == status, (headers, handed_over, reply)
                if status == 401:
                    assert reply[1]["www-authenticate"] == 'Bearer realm="sdns"'
    finally:
        process.stop()


@pytest.mark.parametrize(("head", "plain"), [
    (b"POST /v1/leases/a1/renew HTTP/1.1\r\nHost: x\r\nContent-Length: 0", True),
    (b"POST /v1/leases/a1/renew HTTP/1.1", True),
    (b"POST /v1/services/ns/web/endpoints/e-1/heartbeat HTTP/1.1\r\nConnection: close", True),
    (b"POST /v1/leases/a1/renew HTTP/1.1\r\nContent-Length: 2", False),
    (b"POST /v1/leases/a1/renew HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0", False),
    (b"POST /v1/leases/a1/renew HTTP/1.1\r\nTransfer-Encoding: chunked", False),
    (b"POST /v1/leases/a1/renew HTTP/1.1\r\nExpect: 100-continue", False),
    (b"POST /v1/leases/a1/renew HTTP/1.0", False),
    (b"POST /v1/leases/a1/renew?x=1 HTTP/1.1", False),
    (b"POST /v1/leases/%61/renew HTTP/1.1", False),
    (b"POST /v1/leases/a1/renew/ HTTP/1.1", False),
    (b"GET /v1/leases/a1/renew HTTP/1.1", False),
    (b"POST /v1/leases/a1 HTTP/1.1", False),
    (b"POST /v1/leases/a1/renew HTTP/1.1\r\nBad Name: x", False),
    (b"POST /v1/leases/a1/renew HTTP/1.1\r\n folded", False),
    (b"POST /v1/leases/a1/renew HTTP/1.1\r\nX-Sdns-Token: a\r\nX-Sdns-Token: b", False),
])
def test_which_requests_are_plain_renewals(head: bytes, plain: bool) -> None:
    assert (plain_renewal(head) is not None) == plain
