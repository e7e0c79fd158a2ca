"""What tests need to drive a real sdns: free ports, the process, an HTTP client, DNS queries."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

SDNS = str(Path(sys.executable).parent / "sdns")


def free_port() -> int:
    """A loopback port free for both TCP and UDP right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port found")


@dataclass
class Reply:
    status: int
    body: Any


class Api:
    """A small synchronous client of the sdns HTTP API."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.headers = {"Content-Type": "application/json"}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None
                ) -> Reply:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return Reply(response.status, _json(response.read()))
        except urllib.error.HTTPError as error:
            return Reply(error.code, _json(error.read()))

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def put(self, path: str, body: Any = None, raw: bytes | None = None) -> Reply:
        return self.request("PUT", path, body, raw)

    def post(self, path: str, body: Any = None) -> Reply:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Reply:
        return self.request("DELETE", path)


def _json(data: bytes) -> Any:
    return json.loads(data) if data else None


class SdnsProcess:
    """``sdns serve`` as a user starts it, on free loopback ports."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.dns_port = free_port()
        self.api_port = free_port()
        # Tests send traffic to loopback only: no forwarding unless a test names its upstream.
        # Nor do they touch the host's addresses: no balancer unless a test asks for one.
        forward = [] if "--forward" in args else ["--forward", "off"]
        balancer = [] if "--balancer" in args else ["--balancer", "off"]
        self.args = ["serve", "--dns-addr", f"127.0.0.1:{self.dns_port}",
                     "--api-addr", f"127.0.0.1:{self.api_port}", *forward, *balancer, *args]
        self.env = {**os.environ, **(env or {})}
        self.api = Api(f"http://127.0.0.1:{self.api_port}")
        self.log = tempfile.NamedTemporaryFile(prefix="sdns-", suffix=".log")  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> SdnsProcess:
        self.process = subprocess.Popen([SDNS, *self.args], env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sdns exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.api.get("/healthz").status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sdns did not become healthy in {timeout}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def query(self, name: str, rdtype: str = "A", *, tcp: bool = False, **make: Any
              ) -> dns.message.Message:
        return query(self.dns_port, name, rdtype, tcp=tcp, **make)

    def dig(self, *args: str) -> str:
        return dig(self.dns_port, *args)


def query(port: int, name: str, rdtype: str = "A", *, tcp: bool = False, **make: Any
          ) -> dns.message.Message:
    message = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), **make)
    if tcp:
        return dns.query.tcp(message, "127.0.0.1", port=port, timeout=3)
    return dns.query.udp(message, "127.0.0.1", port=port, timeout=3, ignore_trailing=True)


def dig(port: int, *args: str) -> str:
    result = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+time=2", "+tries=1", *args],
                            capture_output=True, text=True, timeout=15, check=True)
    return result.stdout


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> float:
    """Seconds it took for ``predicate()`` to hold; fails the test after ``timeout``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Watch:
    """Reads ``GET /v1/watch`` as a client follows it: one JSON event a line."""

    def __init__(self, api: Api, since: int | None = None, timeout: float = 10) -> None:
        query = "" if since is None else f"?since={since}"
        request = urllib.request.Request(api.base + "/v1/watch" + query, headers=api.headers)
        self.response = urllib.request.urlopen(request, timeout=timeout)

    def next(self) -> dict[str, Any]:
        line = self.response.readline()
        assert line, "the watch stream ended"
        return json.loads(line)

    def take(self, count: int, namespace: str | None = None) -> list[dict[str, Any]]:
        """The next ``count`` events (of ``namespace`` only, when given)."""
        events: list[dict[str, Any]] = []
        while len(events) < count:
            event = self.next()
            if namespace is None or event["namespace"] == namespace:
                events.append(event)
        return events

    def close(self) -> None:
        self.response.close()
