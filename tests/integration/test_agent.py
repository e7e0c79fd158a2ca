"""``sdns agent`` as a sidekick runs it, against a real sdns: it registers under a lease,
SIGTERM removes the endpoints at once, SIGKILL lets them expire after the ttl, a failing check
flips ready, and an sdns restart (memory backend) is followed by a new registration."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.endpoints import HttpEndpoint
from tests.helpers.support import SDNS, SdnsProcess, wait_until

MakeSdns = Callable[..., SdnsProcess]


@pytest.fixture
def run_agent() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def run(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen([SDNS, "agent", *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        started.append(process)
        return process

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def _cart(sdns: SdnsProcess, *flags: str) -> list[str]:
    """The agent's flags for shop/cart cart-1 on ``sdns``."""
    return ["--server", sdns.api.base, "--service", "shop/cart", "--id", "cart-1",
            "--ip", "10.244.1.5", *flags]


def _endpoints(process: SdnsProcess, service: str = "shop/cart") -> list[dict[str, object]]:
    reply = process.api.get(f"/v1/services/{service}/endpoints")
    return reply.body["endpoints"] if reply.status == 200 else []


def test_registers_under_a_lease_and_sigterm_removes_at_once(make_sdns: MakeSdns,
                                                             run_agent) -> None:
    sdns = make_sdns()
    agent = run_agent(*_cart(sdns, "--port", "http=8080", "--ttl", "6"))
    wait_until(lambda: [e["id"] for e in _endpoints(sdns)] == ["cart-1"], timeout=5)
    endpoint = _endpoints(sdns)[0]
    assert endpoint["lease"] and endpoint["ready"] is True
    assert sdns.query("cart.shop.svc.cluster.local").answer
    time.sleep(4)  # past a renewal (every 2 s): still there, nothing rewritten
    assert _endpoints(sdns) and _endpoints(sdns)[0]["lease"] == endpoint["lease"]
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    assert _endpoints(sdns) == []  # gone when the agent has exited, not ttl later
    assert sdns.api.get(f"/v1/leases/{endpoint['lease']}").status == 404


def test_sigkill_lets_the_lease_expire(make_sdns: MakeSdns, run_agent) -> None:
    sdns = make_sdns()
    agent = run_agent(*_cart(sdns, "--ttl", "3"))
    wait_until(lambda: _endpoints(sdns) != [], timeout=5)
    agent.kill()
    killed = time.monotonic()
    wait_until(lambda: _endpoints(sdns) == [], timeout=6)
    assert time.monotonic() - killed <= 3 + 1.5


def test_a_failing_exec_check_flips_ready(make_sdns: MakeSdns, run_agent,
                                          tmp_path: Path) -> None:
    sdns = make_sdns()
    healthy = tmp_path / "healthy"
    agent = run_agent(*_cart(sdns, "--port", "http=8080", "--check-exec", f"test -f {healthy}",
                             "--check-interval", "1", "--fall", "2"))
    # not served until the check passes
    wait_until(lambda: _endpoints(sdns) != [], timeout=5)
    assert _endpoints(sdns)[0]["ready"] is False
    healthy.touch()
    wait_until(lambda: _endpoints(sdns)[0]["ready"] is True, timeout=3)
    healthy.unlink()
    failed = time.monotonic()
    wait_until(lambda: _endpoints(sdns)[0]["ready"] is False, timeout=5)
    assert time.monotonic() - failed <= 2 * 1 + 1.5  # fall x interval + 1 s
    agent.send_signal(signal.SIGINT)
    assert agent.wait(10) == 0


def test_an_http_check_and_a_config_file(make_sdns: MakeSdns, run_agent,
                                         tmp_path: Path) -> None:
    sdns = make_sdns()
    server = HttpEndpoint()
    try:
        config = tmp_path / "agent.toml"
        config.write_text(f"""
server = "{sdns.api.base}"
ttl = 6

[[service]]
service = "shop/cart"
id = "cart-1"
ip = "127.0.0.1"
ports = {{ http = {server.port} }}
check = {{ type = "http", path = "/healthz", interval = 1 }}

[[service]]
service = "shop/search"
id = "search-1"
ip = "10.244.1.6"
""")
        agent = run_agent("--config", str(config))
        wait_until(lambda: [e["ready"] for e in _endpoints(sdns)] == [True], timeout=5)
        assert [e["id"] for e in _endpoints(sdns, "shop/search")] == ["search-1"]
        assert server.hits > 0
        server.status = 500
        wait_until(lambda: [e["ready"] for e in _endpoints(sdns)] == [False], timeout=6)
        # SIGHUP: search-1 goes, cart-2 comes
        config.write_text(config.read_text().replace('"search-1"', '"search-2"'))
        agent.send_signal(signal.SIGHUP)
        wait_until(lambda: [e["id"] for e in _endpoints(sdns, "shop/search")] == ["search-2"],
                   timeout=5)
    finally:
        server.stop()


def test_a_restarted_sdns_gets_everything_again(make_sdns: MakeSdns, run_agent) -> None:
    sdns = make_sdns()
    agent = run_agent(*_cart(sdns, "--ttl", "3"))
    wait_until(lambda: _endpoints(sdns) != [], timeout=5)
    sdns.stop()
    sdns.start()  # the memory backend starts empty, on the same ports
    restarted = time.monotonic()
    wait_until(lambda: [e["id"] for e in _endpoints(sdns)] == ["cart-1"], timeout=6)
    assert time.monotonic() - restarted <= 3 / 3 + 2  # within a renewal period (and back-off)
    assert agent.poll() is None


def test_bad_flags_are_a_usage_error() -> None:
    result = subprocess.run([SDNS, "agent", "--service", "shop/cart"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "--service, --id and --ip" in result.stderr
