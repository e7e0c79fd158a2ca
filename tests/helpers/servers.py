"""Real etcd and ZooKeeper servers for tests: Debian's packages, loopback, temporary data."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.helpers.support import free_port

# slf4j-simple: ZooKeeper's warnings and errors go to the server's log, not to slf4j's no-op
ZOOKEEPER_CLASSPATH = ("/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:"
                       "/usr/share/java/slf4j-simple.jar")


def missing_etcd() -> str | None:
    if shutil.which("etcd"):
        return None
    return "etcd is not installed (make test installs etcd-server)"


def missing_zookeeper() -> str | None:
    if shutil.which("java") and Path("/usr/share/java/zookeeper.jar").exists():
        return None
    return "ZooKeeper is not installed (make test installs zookeeper)"


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    tail = log.read_text()[-3000:]
    raise RuntimeError(f"server not listening on {port} after {timeout}s:\n{tail}")


class Server:
    """A server process that can be killed and started again on the same ports and data."""

    def __init__(self, client_port: int | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"sdns-{type(self).__name__.lower()}-"))
        self.log = self.dir / "server.log"
        self.client_port = client_port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        """Where clients reach it."""
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> Server:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.dir)
        _wait_for_port(self.client_port, self.process, self.log, 30)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()  # its data goes next; a member that lost its quorum is slow to stop
        shutil.rmtree(self.dir, ignore_errors=True)


class Etcd(Server):
    """One etcd member; ``cluster`` names all members when it is part of several."""

    def __init__(self, name: str = "sdns-test", cluster: dict[str, int] | None = None,
                 client_port: int | None = None, peer_port: int | None = None) -> None:
        super().__init__(client_port)
        self.name = name
        self.peer_port = peer_port or free_port()
        self.cluster = cluster or {name: self.peer_port}

    def command(self) -> list[str]:
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in self.cluster.items())
        return [
            "etcd", "--name", self.name, "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", f"http://127.0.0.1:{self.client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--heartbeat-interval", "50", "--election-timeout", "500",
            # whole endpoint sets are one transaction: room for 10,000 endpoints
            "--max-txn-ops", "20000", "--max-request-bytes", str(8 * 1024 * 1024),
        ]

    def is_leader(self) -> bool:
        out = subprocess.run(["etcdctl", "--endpoints", self.endpoint, "endpoint", "status",
                              "-w", "json"], capture_output=True, text=True, timeout=10)
        return '"leader"' in out.stdout and _leader_matches(out.stdout)


def _leader_matches(status_json: str) -> bool:
    import json

    status = json.loads(status_json)[0]["Status"]
    return status["leader"] == status["header"]["member_id"]


class ZooKeeper(Server):
    def __init__(self) -> None:
        super().__init__()
        (self.dir / "data").mkdir()
        (self.dir / "zoo.cfg").write_text(
            "tickTime=500\n"
            f"dataDir={self.dir / 'data'}\n"
            f"clientPort={self.client_port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "minSessionTimeout=1000\nmaxSessionTimeout=20000\n"
            "4lw.commands.whitelist=srvr\n"
        )

    def start(self) -> ZooKeeper:
        super().start()
        deadline = time.monotonic() + 30
        while not self._serving():
            if time.monotonic() > deadline:
                raise RuntimeError(f"ZooKeeper not serving after 30 s:\n"
                                   f"{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def _serving(self) -> bool:
        """Whether ZooKeeper takes sessions. It listens before it has loaded its data, and a
        session asked for then can go unanswered until the client gives up (5 s in sdns)."""
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=1) as sock:
                sock.sendall(b"srvr")
                reply = b"".join(iter(lambda: sock.recv(4096), b""))
        except OSError:
            return False
        return b"Mode:" in reply

    def command(self) -> list[str]:
        return ["java", "-cp", ZOOKEEPER_CLASSPATH, f"-Dzookeeper.log.dir={self.dir}",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(self.dir / "zoo.cfg")]


S = TypeVar("S", Etcd, ZooKeeper)


@contextlib.contextmanager
def running(kind: type[S]) -> Iterator[S]:
    """A started server of ``kind``, removed with its data at the end; the test skips, saying
    why, when the machine lacks it."""
    reason = missing_etcd() if kind is Etcd else missing_zookeeper()
    if reason:
        pytest.skip(reason)
    server = kind()
    server.start()
    try:
        yield server
    finally:
        server.remove()


def backend_args(request: pytest.FixtureRequest, backend: str) -> list[str]:
    """Flags that put an sdns on ``backend``, under a prefix of its own."""
    prefix = ["--prefix", f"/sdns-test-{uuid.uuid4().hex[:8]}"]
    if backend == "etcd":
        server = request.getfixturevalue("etcd_server")
        return ["--backend", "etcd", "--etcd-endpoints", server.endpoint, *prefix]
    if backend == "zookeeper":
        server = request.getfixturevalue("zookeeper_server")
        return ["--backend", "zookeeper", "--zk-hosts", server.endpoint, *prefix]
    return ["--backend", "memory"]
