"""Real TCP, UDP and HTTP servers standing in for a service's endpoints: each answers (with its
name, or a status) and counts the connections, flows or requests that reached it."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading


class TcpEndpoint:
    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._open = True
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self._open:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    if conn.recv(16):
                        self.count += 1
                        conn.sendall(self.name.encode())
                except OSError:
                    pass

    def stop(self) -> None:
        """Stop accepting: connections to its port are refused from now on."""
        self._open = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.sock.close()


class UdpEndpoint:
    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.flows: set[tuple[str, int]] = set()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                _, addr = self.sock.recvfrom(2048)
            except OSError:
                return
            self.flows.add(addr)
            self.sock.sendto(self.name.encode(), addr)

    def stop(self) -> None:
        self.sock.close()


def connect(host: str, port: int, timeout: float = 3) -> str:
    """Open a connection, say something, and return which endpoint answered."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(b"hi")
        return conn.recv(64).decode()


# The same, as programs to run inside a network namespace (python -c SCRIPT args...).

# args: host port name
SERVER_SCRIPT = """
import socket, sys
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[1], int(sys.argv[2]))); sock.listen(128)
while True:
    conn, _ = sock.accept()
    with conn:
        if conn.recv(16):
            conn.sendall(sys.argv[3].encode())
"""

# args: host-or-name port count; prints {endpoint name: connections}
CLIENT_SCRIPT = """
import collections, socket, sys
got = collections.Counter()
for _ in range(int(sys.argv[3])):
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as conn:
        conn.sendall(b"hello")
        got[conn.recv(64).decode()] += 1
print(dict(got))
"""

# args: port; returns once 127.0.0.1:port accepts connections
WAIT_SCRIPT = """
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
"""


class HttpEndpoint:
    """An HTTP server on loopback answering every GET with ``status`` (settable), counting
    the requests: what a health check probes."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        endpoint = self
        self.status = 200
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.hits += 1
                self.send_response(endpoint.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
