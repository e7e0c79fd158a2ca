"""End to end in a network namespace the test creates: sdns on 127.0.0.1:53 is the resolver of
a "container", which finds services by short name through glibc and the search path."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.endpoints import CLIENT_SCRIPT, SERVER_SCRIPT, WAIT_SCRIPT
from tests.helpers.netns import Api, Netns, missing_netns
from tests.helpers.support import SDNS


@pytest.fixture
def container(tmp_path: Path) -> Iterator[tuple[Netns, Api]]:
    """A namespace whose resolver is sdns (userspace balancer, forwarding to dnsmasq)."""
    reason = missing_netns()
    if reason:
        pytest.skip(reason)
    for tool in ("dnsmasq", "getent", "nslookup", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make test installs it)")
    netns = Netns(f"sdns-test-{os.getpid()}")
    try:
        resolv = subprocess.run([SDNS, "resolv-conf", "--namespace", "default",
                                 "--nameserver", "127.0.0.1"],
                                capture_output=True, text=True, check=True).stdout
        netns.write_resolv_conf(resolv)
        netns.start("dnsmasq", "--no-daemon", "--port", "5300", "--listen-address",
                    "127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                    "--host-record=example.org,192.0.2.10", "--local=/example.org/",
                    log=tmp_path / "dnsmasq.log")
        api = netns.start_sdns("--forward", "127.0.0.1:5300", "--balancer", "userspace",
                               log=tmp_path / "sdns.log")
        yield netns, api
    finally:
        netns.remove()


def test_container_resolves_services_by_short_name(container: tuple[Netns, Api]) -> None:
    netns, api = container
    web = json.loads(api("PUT", "/v1/services/default/web", "{}"))["clusterIP"]
    cart = json.loads(api("PUT", "/v1/services/shop/cart", "{}"))["clusterIP"]

    assert netns.run("getent", "hosts", "web").split() == [web, "web.default.svc.cluster.local"]
    assert netns.run("getent", "hosts", "cart.shop").split()[0] == cart
    looked_up = netns.run("nslookup", "web")
    assert "web.default.svc.cluster.local" in looked_up and web in looked_up
    assert netns.run("getent", "hosts", "example.org").split()[0] == "192.0.2.10"


def test_web_app_finds_its_database_by_name(container: tuple[Netns, Api], tmp_path: Path
                                            ) -> None:
    netns, api = container
    for port, name in ((3307, "db-a"), (3308, "db-b")):
        netns.start(sys.executable, "-c", SERVER_SCRIPT, "127.0.0.1", str(port), name,
                    log=tmp_path / "mariadb.log")
    for port in (3307, 3308):  # both listen before the balancer may try them
        netns.run(sys.executable, "-c", WAIT_SCRIPT, str(port))
    api("PUT", "/v1/services/default/mariadb",
        '{"ports": [{"name": "mysql", "port": 3306}]}')
    api("PUT", "/v1/services/default/mariadb/endpoints/db-a",
        '{"ip": "127.0.0.1", "ports": {"mysql": 3307}}')
    api("PUT", "/v1/services/default/mariadb/endpoints/db-b",
        '{"ip": "127.0.0.1", "ports": {"mysql": 3308}}')

    deadline = time.monotonic() + 10
    while True:  # the balancer listens on the VIP a moment after the registration
        try:
            out = netns.run(sys.executable, "-c", CLIENT_SCRIPT, "mariadb", "3306", "40")
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert ast.literal_eval(out) == {"db-a": 20, "db-b": 20}
