from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from sdns.config import (
    SETTINGS,
    Config,
    ConfigError,
    HostPort,
    default_text,
    host_port,
    load,
    setting_names,
)
from tests.helpers.support import SDNS

ROOT = Path(__file__).resolve().parents[2]


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


def _readme_settings() -> set[str]:
    """The setting names in the first column of the README's configuration table."""
    text = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([a-z-]+)`", row)}


def test_every_setting_is_in_the_readme_the_help_and_the_file_format(tmp_path) -> None:
    names = set(setting_names())
    assert _readme_settings() == names
    help_text = subprocess.run([SDNS, "serve", "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert {name for name in names if f"--{name} " not in help_text} == set()
    for key, setting in SETTINGS.items():  # and the file takes each, written as --help says
        if setting.default is None:
            path = tmp_path / f"{key}.toml"
            path.write_text(f"{key.replace('_', '-')} = {json.dumps(default_text(key))}\n")
            assert load(path) == Config(), key


def test_every_key_of_the_shipped_config_files_is_a_setting() -> None:
    for path in (ROOT / "conf").glob("*.toml"):
        keys = set(tomllib.loads(path.read_text()))
        assert keys <= set(setting_names()), path.name
