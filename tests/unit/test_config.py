from __future__ import annotations

import pytest

from sdns.config import Config, ConfigError, HostPort, host_port, load


def test_defaults() -> None:
    assert load() == Config()
    assert Config().dns_addr == HostPort("127.0.0.1", 1053)
    assert Config().api_addr == HostPort("127.0.0.1", 8053)


def test_precedence(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('zone = "a.example"\nttl = 1\ndns-addr = "127.0.0.2:53"\n')
    config = load(path, {"SDNS_ZONE": "b.example", "SDNS_TTL": "2"}, {"zone": "c.example",
                                                                      "ttl": None})
    assert (config.zone, config.ttl, config.dns_addr) == ("c.example", 2,
                                                           HostPort("127.0.0.2", 53))


def test_embedded_config_file_is_the_default() -> None:
    assert load("conf/sdns.toml") == Config()


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:53", HostPort("127.0.0.1", 53)),
    ("[::1]:1053", HostPort("::1", 1053)),
    ("0.0.0.0:0", HostPort("0.0.0.0", 0)),
])
def test_host_port(text: str, expected: HostPort) -> None:
    assert host_port(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("flags", [
    {"ttl": "x"}, {"ttl": "-1"}, {"service_cidr": "10.0.0.0/33"}, {"service_cidr": "10.0.0.1/30"},
    {"service_cidr": "10.0.0.0/31"}, {"dns_addr": ":53"}, {"api_addr": "h:99999"},
    {"zone": "-bad-.local"},
])
def test_bad_values(flags: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load(flags=flags)


def test_bad_file(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("zone = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)
