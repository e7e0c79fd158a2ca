"""What the backends promise beyond one request: the watch stream, restarts, several replicas
on one store, and surviving the store going away."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.rcode
import pytest

from tests.helpers.servers import Etcd, ZooKeeper, backend_args, missing_etcd, running
from tests.helpers.support import SDNS, Api, SdnsProcess, Watch, free_port, query, wait_until

DISTRIBUTED = ["etcd", "zookeeper"]
MakeSdns = Callable[..., SdnsProcess]


def addresses(process: SdnsProcess, name: str, rdtype: str = "A") -> list[str]:
    return sorted(rd.to_text() for rrset in process.query(name, rdtype).answer for rd in rrset)


# The watch stream, on every backend

def test_watch_stream_is_ordered_and_replayable(sdns: SdnsProcess, ns: str) -> None:
    start = sdns.api.get("/v1/services").body["revision"]
    live = Watch(sdns.api, since=start + 1)
    try:
        sdns.api.put(f"/v1/services/{ns}/web", {})
        sdns.api.put(f"/v1/services/{ns}/web/endpoints/e1", {"ip": "10.0.0.1"})
        sdns.api.put(f"/v1/services/{ns}/web/endpoints/e2", {"ip": "10.0.0.2"})
        sdns.api.delete(f"/v1/services/{ns}/web/endpoints/e1")
        sdns.api.delete(f"/v1/services/{ns}/web")
        events = live.take(6, namespace=ns)
    finally:
        live.close()
    steps = [(e["action"], e["kind"], e["id"]) for e in events]
    assert steps == [
        ("put", "service", None),
        ("put", "endpoint", "e1"),
        ("put", "endpoint", "e2"),
        ("delete", "endpoint", "e1"),
        ("delete", "endpoint", "e2"),
        ("delete", "service", None),
    ]
    revisions = [e["revision"] for e in events]
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == 5  # the service delete takes its endpoints in one revision
    assert events[1]["object"]["ip"] == "10.0.0.1"
    assert events[0]["object"]["clusterIP"]

    replay = Watch(sdns.api, since=start + 1)
    try:
        assert replay.take(6, namespace=ns) == events
    finally:
        replay.close()


def test_watch_rejects_a_bad_revision(sdns: SdnsProcess) -> None:
    reply = sdns.api.get("/v1/watch?since=abc")
    assert reply.status == 400
    assert reply.body["field"] == "since"


def test_a_watcher_that_leaves_is_no_error(make_sdns: MakeSdns, ns: str) -> None:
    process = make_sdns()
    client = socket.create_connection(("127.0.0.1", process.api_port))
    client.sendall(b"GET /v1/watch HTTP/1.1\r\nHost: sdns\r\n\r\n")
    assert client.recv(4096).startswith(b"HTTP/1.1 200")
    port = client.getsockname()[1]
    client.close()

    def served() -> bool:
        """Whether sdns still holds the watch's connection (once it has tried writing to
        it: each change it sends may find it closed)."""
        process.api.put(f"/v1/services/{ns}/s{time.monotonic_ns()}", {})
        ends = f":{process.api_port:04X} 0100007F:{port:04X} "
        return ends in Path("/proc/net/tcp").read_text()

    wait_until(lambda: not served(), timeout=5)
    assert "Error handling request" not in process.output()


def test_readyz(sdns: SdnsProcess) -> None:
    reply = sdns.api.get("/readyz")
    assert reply.status == 200
    assert reply.body["status"] == "ready"


# Restarts and replicas, on etcd and ZooKeeper

@pytest.fixture(params=DISTRIBUTED)
def shared(request: pytest.FixtureRequest) -> list[str]:
    """Backend flags (with a fresh prefix) that several sdns processes can share."""
    return backend_args(request, request.param)


def test_restart_reloads_state_and_ttls_keep_running(make_sdns: MakeSdns, shared: list[str],
                                                    ns: str) -> None:
    first = make_sdns(*shared)
    service = first.api.put(f"/v1/services/{ns}/web", {"ports": [{"name": "http",
                                                                  "port": 80}]}).body
    first.api.put(f"/v1/services/{ns}/db/endpoints/kept", {"ip": "10.1.0.1"})
    registered = time.monotonic()
    first.api.put(f"/v1/services/{ns}/db/endpoints/brief", {"ip": "10.1.0.2", "ttl": 3})
    assert first.stop() == 0

    second = make_sdns(*shared)
    assert second.api.get(f"/v1/services/{ns}/web").body == service
    assert addresses(second, f"web.{ns}.svc.cluster.local") == [service["clusterIP"]]
    ids = {e["id"] for e in second.api.get(f"/v1/services/{ns}/db/endpoints").body["endpoints"]}
    assert ids == {"kept", "brief"}
    wait_until(lambda: [e["id"] for e in second.api.get(
        f"/v1/services/{ns}/db/endpoints").body["endpoints"]] == ["kept"], timeout=6)
    assert time.monotonic() - registered <= 3 + 1.5


def test_replicas_share_one_view(make_sdns: MakeSdns, shared: list[str], ns: str) -> None:
    a, b = make_sdns(*shared), make_sdns(*shared)
    a.api.put(f"/v1/services/{ns}/web/endpoints/e1", {"ip": "10.2.0.1"})
    ip = a.api.get(f"/v1/services/{ns}/web").body["clusterIP"]
    took = wait_until(lambda: addresses(b, f"web.{ns}.svc.cluster.local") == [ip], timeout=2)
    assert took < 1
    b.api.delete(f"/v1/services/{ns}/web")
    wait_until(lambda: a.query(f"web.{ns}.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN,
               timeout=2)
    # a replica that starts later has no history from before it: resuming there is a 410
    c = make_sdns(*shared)
    gone = c.api.get("/v1/watch?since=1")
    assert gone.status == 410
    assert "list the services again" in gone.body["error"]


def test_concurrent_allocation_across_replicas(make_sdns: MakeSdns, shared: list[str],
                                               ns: str) -> None:
    a, b = make_sdns(*shared), make_sdns(*shared)
    apis = [Api(a.api.base), Api(b.api.base)]

    def create(i: int) -> str:
        reply = apis[i % 2].put(f"/v1/services/{ns}/s{i}", {})
        assert reply.status == 201, reply.body
        return reply.body["clusterIP"]

    with ThreadPoolExecutor(32) as pool:
        ips = list(pool.map(create, range(400)))
    assert len(set(ips)) == 400

    def lists_all(replica: SdnsProcess) -> bool:
        services = replica.api.get(f"/v1/services?namespace={ns}").body["services"]
        return {s["clusterIP"] for s in services} == set(ips)

    # Each write is visible at once on the replica that took it; the other one sees it when its
    # watch delivers it.
    wait_until(lambda: lists_all(a) and lists_all(b), timeout=5)


# Losing the backend

@pytest.fixture(params=DISTRIBUTED)
def own_backend(request: pytest.FixtureRequest) -> Iterator[tuple[Etcd | ZooKeeper, list[str]]]:
    """A backend server of this test's own, which it may kill and restart."""
    flag = "--etcd-endpoints" if request.param == "etcd" else "--zk-hosts"
    with running(Etcd if request.param == "etcd" else ZooKeeper) as server:
        yield server, ["--backend", request.param, flag, server.endpoint]


class Traffic:
    """DNS queries for one name in a loop (bounded in count), counting the answers."""

    def __init__(self, port: int, name: str, expected: list[str]) -> None:
        self.port, self.name, self.expected = port, name, expected
        self.answered = self.wrong = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for _ in range(20_000):
            if self._stop.is_set():
                return
            reply = query(self.port, self.name)
            got = sorted(rd.to_text() for rrset in reply.answer for rd in rrset)
            if got == self.expected:
                self.answered += 1
            else:
                self.wrong += 1
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_backend_outage_serves_stale_and_resyncs(make_sdns: MakeSdns, own_backend, ns: str
                                                 ) -> None:
    server, flags = own_backend
    process = make_sdns(*flags)
    before = [process.api.put(f"/v1/services/{ns}/s{i}", {}).body["clusterIP"]
              for i in range(20)]
    process.api.put(f"/v1/services/{ns}/db/endpoints/e1", {"ip": "10.3.0.1"})
    traffic = Traffic(process.dns_port, f"s0.{ns}.svc.cluster.local", [before[0]])
    try:
        server.kill()
        wait_until(lambda: process.api.get("/readyz").status == 503, timeout=10)
        asked = time.monotonic()
        write = process.api.put(f"/v1/services/{ns}/during", {})
        assert time.monotonic() - asked < 2, "a write in an outage fails fast"
        assert write.status == 503
        assert write.body["error"].startswith("backend unavailable:")
        assert process.api.get("/healthz").status == 200
        for i, ip in enumerate(before):
            assert addresses(process, f"s{i}.{ns}.svc.cluster.local") == [ip]
        served_during_outage = traffic.answered

        server.start()
        wait_until(lambda: process.api.get("/readyz").status == 200, timeout=20)
        wait_until(lambda: process.api.put(f"/v1/services/{ns}/after", {}).status == 201,
                   timeout=20)
        after = process.api.get(f"/v1/services/{ns}/after").body["clusterIP"]
        wait_until(lambda: addresses(process, f"after.{ns}.svc.cluster.local") == [after],
                   timeout=5)
    finally:
        traffic.stop()
    assert traffic.wrong == 0
    assert served_during_outage > 0
    listed = process.api.get(f"/v1/services?namespace={ns}").body["services"]
    assert {s["name"] for s in listed} == {*(f"s{i}" for i in range(20)), "db", "after"}
    assert process.api.get(f"/v1/services/{ns}/db/endpoints").body["endpoints"][0]["id"] == "e1"
    assert process.api.get(f"/v1/services/{ns}/during").status == 404


def test_etcd_cluster_survives_losing_its_leader(make_sdns: MakeSdns, ns: str) -> None:
    reason = missing_etcd()
    if reason:
        pytest.skip(reason)

    peers = {f"m{i}": free_port() for i in range(3)}
    members = [Etcd(name, cluster=peers, peer_port=port) for name, port in peers.items()]
    try:
        starters = [threading.Thread(target=m.start) for m in members]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        # the leader first: renewals' stream goes to the first member, and must move on
        wait_until(lambda: any(m.is_leader() for m in members), timeout=10, interval=0.2)
        leader = next(m for m in members if m.is_leader())
        endpoints = ",".join(m.endpoint for m in sorted(members, key=lambda m: m != leader))
        process = make_sdns("--backend", "etcd", "--etcd-endpoints", endpoints)
        ip = process.api.put(f"/v1/services/{ns}/web", {}).body["clusterIP"]
        lease = process.api.post("/v1/leases", {"ttl": 60}).body["id"]
        assert process.api.post(f"/v1/leases/{lease}/renew").status == 200
        leader.kill()
        assert addresses(process, f"web.{ns}.svc.cluster.local") == [ip]

        def write() -> bool:
            try:
                return process.api.put(f"/v1/services/{ns}/after", {}).status == 201
            except (urllib.error.URLError, TimeoutError):
                return False

        wait_until(write, timeout=15, interval=0.2)
        after = process.api.get(f"/v1/services/{ns}/after").body["clusterIP"]
        wait_until(lambda: addresses(process, f"after.{ns}.svc.cluster.local") == [after],
                   timeout=5)
        wait_until(lambda: process.api.post(f"/v1/leases/{lease}/renew").status == 200,
                   timeout=15, interval=0.2)
    finally:
        for member in members:
            member.remove()


# DNS workers

def test_workers_share_the_dns_port(make_sdns: MakeSdns, request: pytest.FixtureRequest,
                                    ns: str) -> None:
    process = make_sdns(*backend_args(request, "etcd"), "--workers", "2")
    pid = process.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1
    ip = process.api.put(f"/v1/services/{ns}/web", {}).body["clusterIP"]
    # each query comes from a new source port, so the kernel spreads them over both processes
    wait_until(lambda: all(addresses(process, f"web.{ns}.svc.cluster.local") == [ip]
                           for _ in range(40)), timeout=5)
    assert process.stop() == 0
    assert not Path(f"/proc/{children[0]}").exists()


def test_workers_need_a_shared_backend() -> None:

    result = subprocess.run([SDNS, "serve", "--workers", "2"], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 2
    assert "need a backend the processes share" in result.stderr


def test_resuming_after_compaction_hands_on_the_difference(make_sdns: MakeSdns, ns: str
                                                           ) -> None:
    import signal

    reason = missing_etcd() or (None if shutil.which("etcdctl") else "etcdctl is not installed")
    if reason:
        pytest.skip(reason)
    server = Etcd().start()
    try:
        flags = ["--backend", "etcd", "--etcd-endpoints", server.endpoint]
        a, b = make_sdns(*flags), make_sdns(*flags)
        a.api.put(f"/v1/services/{ns}/gone", {})
        kept = a.api.put(f"/v1/services/{ns}/kept", {}).body["clusterIP"]
        stream = Watch(a.api, since=a.api.get("/v1/services").body["revision"] + 1)
        try:
            a.process.send_signal(signal.SIGSTOP)
            server.kill()  # A's watch breaks: it must start again after what follows
            server.start()
            wait_until(lambda: b.api.delete(f"/v1/services/{ns}/gone").status == 204,
                       timeout=20, interval=0.2)
            born = b.api.put(f"/v1/services/{ns}/born", {}).body["clusterIP"]
            revision = b.api.get("/v1/services").body["revision"]
            subprocess.run(["etcdctl", "--endpoints", server.endpoint, "compact",
                            str(revision)], check=True, capture_output=True, timeout=10)
            a.process.send_signal(signal.SIGCONT)
            wait_until(lambda: addresses(a, f"born.{ns}.svc.cluster.local") == [born],
                       timeout=20)
            assert a.query(f"gone.{ns}.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
            assert addresses(a, f"kept.{ns}.svc.cluster.local") == [kept]
            events = stream.take(2, namespace=ns)
            assert "compacted; reloading" in a.output()  # the path under test was taken
        finally:
            stream.close()
    finally:
        server.remove()
    assert sorted((e["action"], e["service"]) for e in events) == [("delete", "gone"),
                                                                   ("put", "born")]
    revisions = {e["revision"] for e in events}
    assert len(revisions) == 1 and revisions.pop() >= revision  # one diff, at the reload
