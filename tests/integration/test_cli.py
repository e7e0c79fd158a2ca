"""The client subcommands and ``sdns.client`` against a real sdns: register, ls, watch shows
the change, deregister; exit codes; tokens; the watch iterator's resume and relist."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sdns.client import ApiError, Client, Sync
from tests.helpers.servers import backend_args
from tests.helpers.support import SDNS, SdnsProcess, free_port, wait_until

MakeSdns = Callable[..., SdnsProcess]


@pytest.fixture(scope="module")
def sdns() -> Iterator[SdnsProcess]:
    """The client is the same whatever the backend: one memory sdns for these tests."""
    process = SdnsProcess().start()
    yield process
    process.stop()


def sdns_cli(process: SdnsProcess, *args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SDNS, *args, "--server", process.api.base], capture_output=True,
                          text=True, timeout=30, env=env)


def test_register_ls_get_deregister(sdns: SdnsProcess, ns: str) -> None:
    done = sdns_cli(sdns, "register", f"{ns}/cart", "cart-1", "--ip", "10.244.1.5",
                    "--port", "http=8080")
    assert done.returncode == 0, done.stderr
    assert f"registered {ns}/cart cart-1 at 10.244.1.5" in done.stdout
    listed = sdns_cli(sdns, "ls", ns)
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORTS"]
    ip = sdns.api.get(f"/v1/services/{ns}/cart").body["clusterIP"]
    assert row.split() == [ns, "cart", "ClusterIP", ip, "http:8080/TCP"]
    shown = json.loads(sdns_cli(sdns, "get", f"{ns}/cart", "-o", "json").stdout)
    assert [e["id"] for e in shown["endpoints"]] == ["cart-1"]
    assert shown["clusterIP"] == ip
    assert "cart-1  10.244.1.5  http:8080  yes    never" in sdns_cli(sdns, "get",
                                                                     f"{ns}/cart").stdout
    assert sdns_cli(sdns, "deregister", f"{ns}/cart", "cart-1").returncode == 0
    assert sdns.api.get(f"/v1/services/{ns}/cart/endpoints").body == {"endpoints": []}
    assert sdns_cli(sdns, "deregister", f"{ns}/cart").returncode == 0
    assert sdns.api.get(f"/v1/services/{ns}/cart").status == 404


def test_exit_codes(sdns: SdnsProcess, ns: str) -> None:
    missing = sdns_cli(sdns, "get", f"{ns}/absent")
    assert missing.returncode == 1
    assert f"404: service {ns}/absent not found" in missing.stderr
    invalid = sdns_cli(sdns, "register", f"{ns}/cart", "c1", "--ip", "not-an-ip")
    assert invalid.returncode == 1 and "(ip)" in invalid.stderr
    assert sdns_cli(sdns, "get", "no-slash").returncode == 2
    assert sdns_cli(sdns, "register", f"{ns}/cart", "c1", "--ip", "10.0.0.1", "--ttl", "5",
                    "--lease", "ab").returncode == 2
    unreachable = subprocess.run([SDNS, "ls", "--server", f"http://127.0.0.1:{free_port()}"],
                                 capture_output=True, text=True, timeout=30)
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr


def test_watch_prints_each_change_as_it_happens(sdns: SdnsProcess, ns: str) -> None:
    since = sdns.api.get("/v1/services").body["revision"] + 1
    watcher = subprocess.Popen([SDNS, "watch", "--since", str(since), "--server",
                                sdns.api.base, "--json"], stdout=subprocess.PIPE, text=True)
    try:
        sdns.api.put(f"/v1/services/{ns}/web/endpoints/w1", {"ip": "10.9.9.1"})
        seen = []
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:  # the service, then the endpoint
            event = json.loads(watcher.stdout.readline())
            if event["namespace"] == ns:
                seen.append(event)
        assert [(e["kind"], e["action"]) for e in seen] == [("service", "put"),
                                                            ("endpoint", "put")]
        assert seen[1]["object"]["ip"] == "10.9.9.1"
    finally:
        watcher.kill()
        watcher.wait()


def test_lease_commands(sdns: SdnsProcess, ns: str) -> None:
    created = json.loads(sdns_cli(sdns, "lease", "create", "--ttl", "60", "--json").stdout)
    assert created["ttl"] == 60
    sdns_cli(sdns, "register", f"{ns}/web", "w1", "--ip", "10.9.9.2", "--lease", created["id"])
    shown = sdns_cli(sdns, "lease", "get", created["id"])
    assert shown.stdout.startswith(created["id"]) and "holds 1" in shown.stdout
    assert sdns_cli(sdns, "lease", "renew", created["id"]).returncode == 0
    assert sdns_cli(sdns, "lease", "delete", created["id"]).returncode == 0
    assert sdns.api.get(f"/v1/services/{ns}/web/endpoints").body == {"endpoints": []}
    assert sdns_cli(sdns, "lease", "renew", created["id"]).returncode == 1


def test_the_cli_takes_its_token_from_the_environment(make_sdns: MakeSdns,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text('[[token]]\nname = "w"\nsecret = "writer-secret-0123456789"\n'
                    'scope = "write"\n')
    process = make_sdns("--tokens", str(path))
    refused = sdns_cli(process, "ls")
    assert refused.returncode == 1 and "401: missing or unknown token" in refused.stderr
    allowed = sdns_cli(process, "ls", env={"SDNS_TOKEN": "writer-secret-0123456789",
                                           "PATH": "/usr/bin:/bin"})
    assert allowed.returncode == 0, allowed.stderr


def test_the_client_watch_relists_past_the_history(make_sdns: MakeSdns,
                                                   request: pytest.FixtureRequest) -> None:
    shared = backend_args(request, "etcd")
    first = make_sdns(*shared)
    first.api.put("/v1/services/shop/old", {})
    later = make_sdns(*shared)  # its history starts after revision 1

    async def follow() -> list[dict[str, object]]:
        async with Client(later.api.base) as client:
            events = []
            stream = client.watch(since=1)
            events.append(await anext(stream))
            await client.put_service("shop", "new", {})
            events.append(await anext(stream))
            await stream.aclose()
            return events

    relist, change = asyncio.run(asyncio.wait_for(follow(), 20))
    assert relist["action"] == "relist"
    assert [s["name"] for s in relist["services"]] == ["old"]
    assert (change["action"], change["service"]) == ("put", "new")


def test_keep_renewed_holds_a_lease_past_its_ttl(sdns: SdnsProcess, ns: str) -> None:
    async def hold() -> str:
        async with Client(sdns.api.base) as client:
            lease = await client.create_lease(2)
            await client.register(ns, "held", "h1", {"ip": "10.9.9.3", "lease": lease["id"]})
            async with client.keep_renewed(lease["id"], 2):
                await asyncio.sleep(4)
                assert [e["id"] for e in await client.endpoints(ns, "held")] == ["h1"]
            return str(lease["id"])

    lease = asyncio.run(hold())
    wait_until(lambda: sdns.api.get(f"/v1/leases/{lease}").status == 404, timeout=5)


def test_the_sync_client(sdns: SdnsProcess, ns: str) -> None:
    with Sync(sdns.api.base) as client:
        client.register(ns, "sync", "s1", {"ip": "10.9.9.4"})
        assert [s["name"] for s in client.services(ns)["services"]] == ["sync"]
        with pytest.raises(ApiError) as refused:
            client.register(ns, "sync", "s2", {"ip": "nope"})
        assert refused.value.status == 400 and refused.value.body["field"] == "ip"
