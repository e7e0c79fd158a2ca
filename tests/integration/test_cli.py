"""`sdns serve` as a user starts and stops it."""

from __future__ import annotations

import signal
import socket
import subprocess

import dns.rcode
import pytest

from tests.helpers.support import SDNS, SdnsProcess, free_port


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SDNS, "serve", *args], capture_output=True, text=True, timeout=20,
                          env=env)


def test_help_documents_every_setting() -> None:
    out = subprocess.run([SDNS, "serve", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--config", "--backend", "--dns-addr", "--api-addr", "--zone",
                 "--service-cidr", "--ttl", "SDNS_"):
        assert flag in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_start_logs_addresses_and_stops_cleanly(sig: signal.Signals) -> None:
    process = SdnsProcess().start()
    assert process.stop(sig) == 0
    log = process.output()
    started = [line for line in log.splitlines() if "serving" in line]
    assert len(started) == 1
    assert f"127.0.0.1:{process.dns_port}" in started[0]
    assert f"127.0.0.1:{process.api_port}" in started[0]
    assert "Traceback" not in log


def test_dns_port_taken_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = _serve("--dns-addr", f"127.0.0.1:{port}", "--api-addr",
                        f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert f"cannot listen for DNS on 127.0.0.1:{port}" in result.stderr
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_api_port_taken_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve("--dns-addr", f"127.0.0.1:{free_port()}", "--api-addr",
                        f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "cannot listen for the HTTP API" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--service-cidr", "10.96.0.1/12"], "--service-cidr"),
    (["--dns-addr", "localhost"], "is not HOST:PORT"),
    (["--ttl", "-3"], "--ttl"),
    (["--zone", "bad zone"], "--zone"),
    (["--backend", "nosuch"], "unknown backend 'nosuch'"),
    (["--config", "/nonexistent/sdns.toml"], "cannot read"),
])
def test_invalid_configuration_exits_2(args: list[str], message: str) -> None:
    result = _serve(*args)
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_in_config_file(tmp_path) -> None:
    config = tmp_path / "sdns.toml"
    config.write_text('zone = "cluster.local"\nservice_cdir = "10.0.0.0/8"\n')
    result = _serve("--config", str(config))
    assert result.returncode == 2
    assert "unknown setting 'service_cdir'" in result.stderr


def test_flags_beat_environment_beat_file(tmp_path) -> None:
    config = tmp_path / "sdns.toml"
    config.write_text('zone = "file.example"\nttl = 30\nservice-cidr = "10.50.0.0/16"\n')
    process = SdnsProcess("--config", str(config), "--zone", "flag.example",
                          env={"SDNS_ZONE": "env.example", "SDNS_TTL": "7"}).start()
    try:
        ip = process.api.put("/v1/services/default/web", {}).body["clusterIP"]
        assert ip.startswith("10.50.")
        reply = process.query("web.default.svc.flag.example")
        assert [r.ttl for r in reply.answer] == [7]
        assert process.query("web.default.svc.env.example").rcode() == dns.rcode.REFUSED
    finally:
        process.stop()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_dns_on_an_ipv6_address() -> None:
    port = free_port()
    process = SdnsProcess("--dns-addr", f"[::1]:{port}").start()
    try:
        assert process.api.put("/v1/services/default/web/endpoints/web-1",
                               {"ip": "10.244.0.9", "ports": {"http": 8080}}).status == 201
        for transport in ("+notcp", "+notcp", "+tcp"):  # a miss, then from the cache
            out = subprocess.run(
                ["dig", "@::1", "-p", str(port), "+time=2", "+tries=1", transport, "+short",
                 "_http._tcp.web.default.svc.cluster.local", "SRV"],
                capture_output=True, text=True, timeout=15, check=True).stdout
            assert out.split()[:3] == ["0", "100", "8080"]
        nx = subprocess.run(["dig", "@::1", "-p", str(port), "+time=2", "+tries=1",
                             "nx.default.svc.cluster.local"],
                            capture_output=True, text=True, timeout=15, check=True).stdout
        assert "status: NXDOMAIN" in nx
    finally:
        process.stop()
