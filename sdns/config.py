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
from sdns.logs import LOG_FORMATS
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


def _cidrs(value: Any) -> tuple[str, ...]:
    """One CIDR, or one per family (dual-stack), comma-separated or a TOML list; the first is
    the primary family."""
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = tuple(_cidr(str(item).strip()) for item in items)
    versions = [ipaddress.ip_network(n).version for n in networks]
    if not 1 <= len(networks) <= 2 or len(set(versions)) != len(versions):
        raise ValueError(f"{value!r} is not one CIDR, or one IPv4 and one IPv6 CIDR")
    return networks


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


BALANCER_MODES = ("off", "userspace", "nftables")


def _balancer(value: Any) -> str:
    if value not in BALANCER_MODES:
        raise ValueError(f"{value!r} is not {', '.join(BALANCER_MODES[:-1])} or "
                         f"{BALANCER_MODES[-1]}")
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


def _megabytes(value: Any) -> int:
    number = int(value)
    if isinstance(value, bool) or not 1 <= number <= 1 << 20:
        raise ValueError(f"{value!r} is not a number of MiB from 1 to {1 << 20}")
    return number


def _period(value: Any) -> int:
    number = int(value)
    if isinstance(value, bool) or not 1 <= number <= 86400:
        raise ValueError(f"{value!r} is not a number of seconds from 1 to 86400")
    return number


def _log_format(value: Any) -> str:
    if value not in LOG_FORMATS:
        raise ValueError(f"{value!r} is not {' or '.join(LOG_FORMATS)}")
    return str(value)


def _switch(value: Any) -> bool:
    """``on`` or ``off`` (or a TOML boolean)."""
    if isinstance(value, bool):
        return value
    if value not in ("on", "off"):
        raise ValueError(f"{value!r} is not on or off")
    return value == "on"


def _fraction(value: Any) -> float:
    number = float(value)
    if isinstance(value, bool) or not 0 < number < 1:
        raise ValueError(f"{value!r} is not a fraction above 0 and below 1")
    return number


def _path(value: Any) -> str:
    text = str(value)
    if not text:
        raise ValueError("needs a file name")
    return text


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not true or false")


@dataclass(frozen=True, slots=True)
class Config:
    backend: str = "memory"
    dns_addr: HostPort = HostPort("127.0.0.1", 1053)
    api_addr: HostPort = HostPort("127.0.0.1", 8053)
    zone: str = "cluster.local"
    service_cidr: tuple[str, ...] = ("10.96.0.0/12",)
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
    balancer_sync: int = 30
    cache_mb: int = 64
    tokens: str | None = None
    metrics_open: bool = False
    log_format: str = "text"
    log_queries: bool = False
    check_deregister_after: int = 0
    self_preservation: bool = True
    self_preservation_threshold: float = 0.15
    self_preservation_max: int = 900

    def __post_init__(self) -> None:
        if self.workers > 1 and self.backend == "memory":
            raise ConfigError("workers above 1 need a backend the processes share (etcd or "
                              "zookeeper): the memory backend lives in one process")


@dataclass(frozen=True, slots=True)
class Setting:
    """How one setting is read from text (environment, flag) or TOML, and told in ``--help``."""

    parse: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    default: str | None = None  # how --help tells the default, when not the value itself
    env: str | None = None  # the environment variable, when not SDNS_<NAME>

    def env_name(self, name: str) -> str:
        return self.env or "SDNS_" + name.upper()


# The one table of settings: the file, the environment and the flags all come from it.
SETTINGS: dict[str, Setting] = {
    "backend": Setting(str, "where registrations live: memory, etcd, zookeeper, or another "
                       "installed backend", "NAME"),
    "dns_addr": Setting(host_port, "DNS listen address, UDP and TCP", "HOST:PORT"),
    "api_addr": Setting(host_port, "HTTP API listen address", "HOST:PORT"),
    "zone": Setting(_zone, "cluster domain", "DOMAIN"),
    "service_cidr": Setting(_cidrs, "ranges clusterIPs come from: one CIDR, or one per family "
                            "for dual-stack services (the first is the primary)",
                            "CIDR[,CIDR]"),
    "ttl": Setting(_seconds, "TTL of DNS records, seconds", "SECONDS"),
    "etcd_endpoints": Setting(_host_list, "etcd members, for --backend etcd",
                              "HOST:PORT[,...]"),
    "zk_hosts": Setting(_host_list, "ZooKeeper servers, for --backend zookeeper",
                        "HOST:PORT[,...]"),
    "prefix": Setting(_prefix, "key prefix in etcd or ZooKeeper, so installations can share a "
                      "cluster", "PATH"),
    "workers": Setting(_workers, "DNS processes sharing the DNS port (SO_REUSEPORT), each with "
                       "its own cache; needs etcd or zookeeper", "N"),
    "forward": Setting(_upstreams, "upstream servers for names outside the zone, or off",
                       "IP[:PORT][,...]|off",
                       default="the nameservers of /etc/resolv.conf other than sdns itself"),
    "forward_allow": Setting(_networks, "clients that may use forwarding; others get REFUSED",
                             "CIDR[,...]", default="loopback and private ranges"),
    "forward_min_ttl": Setting(_seconds, "shortest time a forwarded answer is cached, seconds",
                               "SECONDS"),
    "forward_max_ttl": Setting(_seconds, "longest time a forwarded answer is cached, seconds",
                               "SECONDS"),
    "serve_stale": Setting(_seconds, "how long past its TTL a forwarded answer may be served "
                           "while every upstream fails, seconds", "SECONDS"),
    "balancer": Setting(_balancer, "what turns connections to clusterIP:port into connections "
                        "to endpoints", choices=BALANCER_MODES),
    "cache_mb": Setting(_megabytes, "MiB the DNS caches may add to the process, together",
                        "MIB"),
    "balancer_sync": Setting(_period, "seconds between full resyncs of the balancer's data "
                             "plane (a failed apply is retried sooner)", "SECONDS"),
    "tokens": Setting(_path, "TOML file of API tokens ([[token]] name, secret, scope, "
                      "namespaces); SIGHUP reloads it", "FILE",
                      default="none: the API is open to whoever reaches it",
                      env="SDNS_TOKENS_FILE"),
    "metrics_open": Setting(boolean, "serve /metrics without a token even when tokens are on",
                            default="false"),
    "log_format": Setting(_log_format, "text lines, or one JSON object a line",
                          choices=LOG_FORMATS),
    "log_queries": Setting(boolean, "log every DNS query (at most 200 lines a second), for "
                           "debugging", default="false"),
    "check_deregister_after": Setting(_seconds, "delete an endpoint whose active check has "
                                      "been critical this many seconds (its deregisterAfter "
                                      "wins); 0 is never", "SECONDS"),
    "self_preservation": Setting(_switch, "keep the endpoints whose leases expire all at once "
                                 "(a partition between agents and sdns, not a mass death)",
                                 choices=("on", "off"), default="on"),
    "self_preservation_threshold": Setting(_fraction, "the share of lease-held endpoints "
                                           "expiring within a minute that turns it on",
                                           "FRACTION"),
    "self_preservation_max": Setting(_period, "seconds an expired endpoint is kept at most",
                                     "SECONDS"),
}


def default_text(name: str) -> str:
    """The default of setting ``name`` as a user would write it."""
    told = SETTINGS[name].default
    if told is not None:
        return told
    value = getattr(Config(), name)
    return ",".join(value) if isinstance(value, tuple) and not isinstance(value, HostPort) \
        else str(value)


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
    for name, setting in SETTINGS.items():
        env_name = setting.env_name(name)
        if env and env_name in env:
            values[name] = _parse(name, env[env_name], env_name)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _parse(name, value, "--" + name.replace("_", "-"))
    return Config(**values)


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML file at ``path``; ``ConfigError`` naming it (and the line) when it cannot be
    read. For sdns's config, the tokens file and the agent's config alike."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


def _read_file(path: Path) -> dict[str, Any]:
    data = read_toml(path)
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in SETTINGS:
            known = ", ".join(setting_names())
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {known})")
        values[name] = _parse(name, value, f"{path}: {key}")
    return values


def _parse(name: str, value: Any, source: str) -> Any:
    try:
        return SETTINGS[name].parse(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None
