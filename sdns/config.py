"""Configuration: defaults < TOML file < ``SDNS_*`` environment < command-line flags.

Every setting has one name, spelled ``dns-addr`` in the file and on the command line and
``SDNS_DNS_ADDR`` in the environment.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from sdns.errors import Invalid
from sdns.validation import domain_name


class ConfigError(Exception):
    pass


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def host_port(value: Any) -> HostPort:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    text = str(value)
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return HostPort(host, int(port))


def _cidr(value: Any) -> str:
    try:
        network = ipaddress.ip_network(str(value))
    except ValueError as error:
        raise ValueError(f"{value!r} is not a network in CIDR notation: {error}") from None
    if network.num_addresses < 4:
        raise ValueError(f"{value} is too small to hold service addresses")
    return str(network)


def _zone(value: Any) -> str:
    try:
        return domain_name(value, "zone")
    except Invalid as error:
        raise ValueError(error.reason) from None


def _host_list(value: Any) -> tuple[str, ...]:
    """``HOST:PORT[,HOST:PORT...]`` or a TOML list of them."""
    items = value.split(",") if isinstance(value, str) else list(value)
    if not items:
        raise ValueError("needs at least one HOST:PORT")
    return tuple(str(host_port(item.strip())) for item in items)


def _prefix(value: Any) -> str:
    text = str(value)
    if not text.startswith("/") or text.endswith("/") or "//" in text:
        raise ValueError(f"{text!r} is not a key prefix like /sdns")
    return text


def _upstreams(value: Any) -> tuple[str, ...]:
    """``IP[:PORT]`` items (port 53 by default), or ``off``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(item).strip() for item in items if str(item).strip()]
    if items == ["off"]:
        return ("off",)
    upstreams = []
    for item in items:
        try:
            ipaddress.ip_address(item.strip("[]"))
            upstreams.append(str(HostPort(item.strip("[]"), 53)))
        except ValueError:
            address = host_port(item)
            ipaddress.ip_address(address.host)
            upstreams.append(str(address))
    return tuple(upstreams)


def _networks(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(ipaddress.ip_network(str(item).strip())) for item in items)


def _balancer(value: Any) -> str:
    if value not in ("off", "userspace", "nftables"):
        raise ValueError(f"{value!r} is not off, userspace or nftables")
    return str(value)


def _workers(value: Any) -> int:
    number = int(value)
    if isinstance(value, bool) or not 1 <= number <= 64:
        raise ValueError(f"{value!r} is not a number of processes from 1 to 64")
    return number


def _seconds(value: Any) -> int:
    number = int(value)
    if isinstance(value, bool) or not 0 <= number <= 2**31 - 1:
        raise ValueError(f"{value!r} is not a number of seconds")
    return number


@dataclass(frozen=True, slots=True)
class Config:
    backend: str = "memory"
    dns_addr: HostPort = HostPort("127.0.0.1", 1053)
    api_addr: HostPort = HostPort("127.0.0.1", 8053)
    zone: str = "cluster.local"
    service_cidr: str = "10.96.0.0/12"
    ttl: int = 5
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    zk_hosts: tuple[str, ...] = ("127.0.0.1:2181",)
    prefix: str = "/sdns"
    workers: int = 1
    # Names outside the zone: () means the nameservers of /etc/resolv.conf, ("off",) none.
    forward: tuple[str, ...] = ()
    forward_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                                      "192.168.0.0/16", "fc00::/7")
    forward_min_ttl: int = 0
    forward_max_ttl: int = 3600
    serve_stale: int = 3600
    balancer: str = "userspace"

    def __post_init__(self) -> None:
        if self.workers > 1 and self.backend == "memory":
            raise ConfigError("workers above 1 need a backend the processes share (etcd or "
                              "zookeeper): the memory backend lives in one process")


# How each setting is read from text (environment) or TOML values.
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "backend": str,
    "dns_addr": host_port,
    "api_addr": host_port,
    "zone": _zone,
    "service_cidr": _cidr,
    "ttl": _seconds,
    "etcd_endpoints": _host_list,
    "zk_hosts": _host_list,
    "prefix": _prefix,
    "workers": _workers,
    "forward": _upstreams,
    "forward_allow": _networks,
    "forward_min_ttl": _seconds,
    "forward_max_ttl": _seconds,
    "serve_stale": _seconds,
    "balancer": _balancer,
}


def upstreams(config: Config, resolv_conf: Path = Path("/etc/resolv.conf")) -> list[HostPort]:
    """Where names outside the zone go: the configured servers, or those of resolv.conf other
    than sdns itself."""
    if config.forward == ("off",):
        return []
    if config.forward:
        return [host_port(item) for item in config.forward]
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            server = HostPort(parts[1], 53)
            if server != config.dns_addr:
                found.append(server)
    return found


def setting_names() -> list[str]:
    return [f.name.replace("_", "-") for f in fields(Config)]


def load(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """The config from all sources; flags with value None are not given."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(Path(path)))
    for name in _PARSERS:
        env_name = "SDNS_" + name.upper()
        if env and env_name in env:
            values[name] = _parse(name, env[env_name], env_name)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _parse(name, value, "--" + name.replace("_", "-"))
    return Config(**values)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _PARSERS:
            known = ", ".join(setting_names())
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {known})")
        values[name] = _parse(name, value, f"{path}: {key}")
    return values


def _parse(name: str, value: Any, source: str) -> Any:
    try:
        return _PARSERS[name](value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None
