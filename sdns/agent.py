"""``sdns agent``: the sidekick that keeps a workload registered.

It holds one lease for everything it registers and renews it at a third of its ttl, so the
endpoints leave DNS within ttl + 1 s of the agent dying. Local checks (http, tcp, or a command)
flip an endpoint's ``ready``, writing only when it changes. A lease found gone (it expired during
a pause, or sdns restarted on the memory backend) is made anew and everything registered again.
SIGTERM or SIGINT delete the lease, so the endpoints leave at once (after ``drain`` seconds not
ready, when asked); SIGHUP reads the config again and applies the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from sdns import probe
from sdns.client import DEFAULT_SERVER, ApiError, Client, Unreachable
from sdns.config import ConfigError, read_toml
from sdns.model import HealthStatus
from sdns.tasks import cancel

log = logging.getLogger("sdns.agent")
DEFAULT_TTL = 15
BACKOFF_START, BACKOFF_MAX = 0.5, 10.0
CHECK_TYPES = ("http", "tcp", "exec")


class AgentConfigError(Exception):
    pass


@dataclass(frozen=True)
class Check:
    type: str
    path: str = "/healthz"
    command: tuple[str, ...] = ()
    port: str | None = None  # a port name; None: the endpoint's first port
    interval: float = 10.0
    timeout: float = 2.0
    rise: int = 1
    fall: int = 3


@dataclass(frozen=True)
class Registration:
    namespace: str
    name: str
    id: str
    ip: str
    ports: tuple[tuple[str, int], ...] = ()
    hostname: str | None = None
    check: Check | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.namespace, self.name, self.id

    def body(self, lease: str, ready: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"ip": self.ip, "ports": dict(self.ports), "ready": ready,
                                "lease": lease}
        if self.hostname:
            body["hostname"] = self.hostname
        return body


@dataclass(frozen=True)
class AgentConfig:
    server: str = DEFAULT_SERVER
    token: str | None = None
    ttl: int = DEFAULT_TTL
    drain: float = 0.0
    registrations: tuple[Registration, ...] = ()


# Configuration: a TOML file of several services, or flags for one

def _check(data: dict[str, Any], where: str) -> Check:
    known = {"type", "path", "command", "port", "interval", "timeout", "rise", "fall"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise AgentConfigError(f"{where}: unknown check key {unknown[0]!r}")
    kind = data.get("type")
    if kind not in CHECK_TYPES:
        raise AgentConfigError(f"{where}: check type must be http, tcp or exec, not {kind!r}")
    interval = float(data.get("interval", 10))
    timeout = float(data.get("timeout", min(2.0, interval / 2)))
    rise, fall = int(data.get("rise", 1)), int(data.get("fall", 3))
    if not 1 <= interval <= 3600 or not 0 < timeout < interval:
        raise AgentConfigError(f"{where}: interval must be 1 to 3600 s and timeout below it")
    if not 1 <= rise <= 10 or not 1 <= fall <= 10:
        raise AgentConfigError(f"{where}: rise and fall must be 1 to 10")
    command = data.get("command", ())
    if isinstance(command, str):
        command = (command,)
    if kind == "exec" and not command:
        raise AgentConfigError(f"{where}: an exec check needs a command")
    path = str(data.get("path", "/healthz"))
    if not path.startswith("/"):
        raise AgentConfigError(f"{where}: the check path must start with /")
    port = data.get("port")
    return Check(kind, path, tuple(str(c) for c in command), None if port is None else str(port),
                 interval, timeout, rise, fall)


def _registration(data: dict[str, Any], where: str) -> Registration:
    known = {"service", "id", "ip", "ports", "hostname", "check"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise AgentConfigError(f"{where}: unknown key {unknown[0]!r}")
    for needed in ("service", "id", "ip"):
        if not isinstance(data.get(needed), str):
            raise AgentConfigError(f"{where}: {needed} is required")
    namespace, slash, name = data["service"].partition("/")
    if not slash:
        raise AgentConfigError(f"{where}: service must be NAMESPACE/NAME")
    ports = data.get("ports", {})
    if not isinstance(ports, dict) or not all(isinstance(v, int) for v in ports.values()):
        raise AgentConfigError(f"{where}: ports must be a table of name = number")
    check = None if data.get("check") is None else _check(data["check"], where)
    if check is not None and check.type != "exec" and not ports:
        raise AgentConfigError(f"{where}: an {check.type} check needs a port to probe")
    if check is not None and check.port is not None and check.port not in ports:
        raise AgentConfigError(f"{where}: the check's port {check.port!r} is not in ports")
    return Registration(namespace, name, data["id"], data["ip"], tuple(ports.items()),
                        data.get("hostname"), check)


def load(path: Path, env: dict[str, str]) -> AgentConfig:
    try:
        data = read_toml(path)
    except ConfigError as error:
        raise AgentConfigError(str(error)) from None
    unknown = sorted(set(data) - {"server", "token", "ttl", "drain", "service"})
    if unknown:
        raise AgentConfigError(f"{path}: unknown key {unknown[0]!r}")
    services = data.get("service", [])
    registrations = tuple(_registration(s, f"{path}: service {i + 1}")
                          for i, s in enumerate(services))
    return _config(data.get("server") or env.get("SDNS_SERVER") or DEFAULT_SERVER,
                   data.get("token") or env.get("SDNS_TOKEN"), data.get("ttl", DEFAULT_TTL),
                   data.get("drain", 0), registrations)


def _config(server: str, token: str | None, ttl: Any, drain: Any,
            registrations: tuple[Registration, ...]) -> AgentConfig:
    if not isinstance(ttl, int) or not 3 <= ttl <= 86400:
        raise AgentConfigError("ttl must be 3 to 86400 seconds")
    if not isinstance(drain, int | float) or drain < 0:
        raise AgentConfigError("drain must be 0 or more seconds")
    if len({r.key for r in registrations}) != len(registrations):
        raise AgentConfigError("an endpoint is given twice")
    return AgentConfig(server, token, ttl, float(drain), registrations)


def add_to(commands: Any) -> None:
    """Add ``sdns agent`` to the ``sdns`` parser's ``commands``."""
    agent = commands.add_parser(
        "agent", help="keep a workload registered: a lease, renewals, local checks",
        description="Register endpoints under a lease of the agent's own, renew it, and run "
                    "local checks that flip ready. One service by flags, or several in a TOML "
                    "file (--config).")
    agent.add_argument("--config", metavar="FILE", help="TOML file of [[service]] tables")
    agent.add_argument("--server", help=f"the sdns API (default $SDNS_SERVER, else "
                       f"{DEFAULT_SERVER})")
    agent.add_argument("--token", help="API token (default $SDNS_TOKEN)")
    agent.add_argument("--ttl", type=int, help=f"lease ttl, seconds (default {DEFAULT_TTL})")
    agent.add_argument("--drain", type=float, help="on SIGTERM, seconds not ready before "
                       "leaving (default 0)")
    agent.add_argument("--service", metavar="NS/NAME")
    agent.add_argument("--id")
    agent.add_argument("--ip")
    agent.add_argument("--hostname")
    agent.add_argument("--port", action="append", default=[], metavar="NAME=NUMBER")
    kind = agent.add_mutually_exclusive_group()
    kind.add_argument("--check-http", metavar="PATH", help="GET this path: 2xx/3xx passes")
    kind.add_argument("--check-tcp", action="store_true", help="a TCP connection passes")
    kind.add_argument("--check-exec", metavar="COMMAND", help="exit status 0 passes")
    agent.add_argument("--check-port", metavar="NAME", help="probe this port (default: the "
                       "first --port)")
    agent.add_argument("--check-interval", type=float, default=10, metavar="SECONDS")
    agent.add_argument("--check-timeout", type=float, metavar="SECONDS")
    agent.add_argument("--rise", type=int, default=1)
    agent.add_argument("--fall", type=int, default=3)


def from_args(args: argparse.Namespace, env: dict[str, str]) -> AgentConfig:
    if args.config:
        config = load(Path(args.config), env)
        return replace(config, server=args.server or config.server,
                       token=args.token or config.token, ttl=args.ttl or config.ttl,
                       drain=config.drain if args.drain is None else args.drain)
    if not (args.service and args.id and args.ip):
        raise AgentConfigError("give --config FILE, or --service, --id and --ip")
    ports = {}
    for text in args.port:
        name, _, number = text.partition("=")
        if not number.isdigit():
            raise AgentConfigError(f"--port {text!r} is not NAME=NUMBER")
        ports[name] = int(number)
    service: dict[str, Any] = {"service": args.service, "id": args.id, "ip": args.ip,
                               "ports": ports, "hostname": args.hostname}
    if args.check_http or args.check_tcp or args.check_exec:
        check: dict[str, Any] = {
            "type": "http" if args.check_http else "tcp" if args.check_tcp else "exec",
            "interval": args.check_interval, "rise": args.rise, "fall": args.fall}
        if args.check_http:
            check["path"] = args.check_http
        if args.check_exec:
            check["command"] = ["/bin/sh", "-c", args.check_exec]
        if args.check_port:
            check["port"] = args.check_port
        if args.check_timeout is not None:
            check["timeout"] = args.check_timeout
        service["check"] = check
    registration = _registration({k: v for k, v in service.items() if v is not None}, "flags")
    return _config(args.server or env.get("SDNS_SERVER") or DEFAULT_SERVER,
                   args.token or env.get("SDNS_TOKEN"), args.ttl or DEFAULT_TTL,
                   args.drain or 0, (registration,))


# Probes

async def run_check(session: aiohttp.ClientSession, registration: Registration,
                    check: Check) -> tuple[bool, str]:
    """Whether the check passes now, and what it saw."""
    if check.type == "exec":
        return await probe.command(check.command, check.timeout)
    ports = dict(registration.ports)
    port = ports[check.port] if check.port else registration.ports[0][1]
    if check.type == "tcp":
        return await probe.tcp(registration.ip, port, check.timeout)
    return await probe.http(session, registration.ip, port, check.path, check.timeout)


@dataclass
class _Health:
    """Where a checked endpoint stands: ready only while its check is passing."""

    run: probe.Run = field(default_factory=probe.Run)
    status: HealthStatus = HealthStatus.UNKNOWN

    @property
    def ready(self) -> bool:
        return self.status is HealthStatus.PASSING

    def saw(self, passed: bool, check: Check) -> bool:
        """Count a result; whether ``ready`` flipped."""
        was = self.ready
        self.status = self.run.status(passed, check.rise, check.fall, self.status)
        return self.ready != was


# The agent

@dataclass
class Agent:
    config: AgentConfig
    reload: Callable[[], AgentConfig] | None = None
    lease: str | None = None
    health: dict[tuple[str, str, str], _Health] = field(default_factory=dict)
    _checks: dict[tuple[str, str, str], asyncio.Task[None]] = field(default_factory=dict)
    _trouble: str | None = None

    def _ready(self, registration: Registration) -> bool:
        if registration.check is None:
            return True
        return self.health.setdefault(registration.key, _Health()).ready

    def _state(self, trouble: str | None) -> None:
        """Log once per change of state, not per attempt."""
        if trouble != self._trouble:
            if trouble is None:
                log.info("registered %d endpoints under lease %s",
                         len(self.config.registrations), self.lease)
            else:
                log.warning("%s; retrying", trouble)
        self._trouble = trouble

    async def _register_all(self, client: Client) -> None:
        lease = await client.create_lease(self.config.ttl)
        self.lease = lease["id"]
        for registration in self.config.registrations:
            await self._put(client, registration)

    async def _put(self, client: Client, registration: Registration) -> None:
        assert self.lease is not None
        await client.register(registration.namespace, registration.name, registration.id,
                              registration.body(self.lease, self._ready(registration)))

    async def run(self, stop: asyncio.Event, hangup: asyncio.Event) -> None:
        async with Client(self.config.server, self.config.token) as client:
            try:
                await self._keep(client, stop, hangup)
            finally:
                for task in self._checks.values():
                    await cancel(task)
            await self._leave(client)

    async def _keep(self, client: Client, stop: asyncio.Event, hangup: asyncio.Event) -> None:
        backoff = BACKOFF_START
        registered = False
        while not stop.is_set():
            try:
                if hangup.is_set() and self.reload is not None:
                    hangup.clear()
                    await self._apply(client, self.reload())
                if not registered:
                    await self._register_all(client)
                    registered = True
                    self._start_checks(client)
                else:
                    assert self.lease is not None
                    await client.renew_lease(self.lease)
                self._state(None)
                backoff = BACKOFF_START
                wait = self.config.ttl / 3
            except ApiError as error:
                if error.status == 404:  # the lease is gone: a new one, everything again
                    registered = False
                    self._state(f"lease {self.lease} is gone ({error})")
                    continue
                self._state(f"sdns refused: {error}")
                wait, backoff = backoff * random.uniform(0.5, 1.5), min(BACKOFF_MAX, backoff * 2)
            except Unreachable as error:
                self._state(str(error))
                wait, backoff = backoff * random.uniform(0.5, 1.5), min(BACKOFF_MAX, backoff * 2)
            except AgentConfigError as error:
                log.error("config not reloaded, the previous one stays: %s", error)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_either(stop, hangup), wait)

    def _start_checks(self, client: Client) -> None:
        for registration in self.config.registrations:
            if registration.check is not None and registration.key not in self._checks:
                self._checks[registration.key] = asyncio.create_task(
                    self._watch_health(client, registration, registration.check))

    async def _watch_health(self, client: Client, registration: Registration,
                            check: Check) -> None:
        health = self.health.setdefault(registration.key, _Health())
        async with probe.session() as session:
            while True:
                await self._check_once(client, session, registration, check, health)
                await asyncio.sleep(check.interval)

    async def _check_once(self, client: Client, session: aiohttp.ClientSession,
                          registration: Registration, check: Check, health: _Health) -> None:
        passed, output = await run_check(session, registration, check)
        if health.saw(passed, check):
            log.info("%s/%s %s is %s: %s", registration.namespace, registration.name,
                     registration.id, "ready" if health.ready else "not ready", output)
            with contextlib.suppress(ApiError, Unreachable):  # the renewal loop retries
                await self._put(client, registration)

    async def _apply(self, client: Client, config: AgentConfig) -> None:
        """The difference between the registrations in force and ``config``'s."""
        before = {r.key: r for r in self.config.registrations}
        after = {r.key: r for r in config.registrations}
        self.config = replace(config, server=self.config.server, token=self.config.token)
        for key, registration in before.items():
            if after.get(key) != registration:
                task = self._checks.pop(key, None)
                if task is not None:
                    await cancel(task)
                self.health.pop(key, None)
                if key not in after:
                    with contextlib.suppress(ApiError):
                        await client.deregister(*key)
        if self.lease is not None:
            for key, registration in after.items():
                if before.get(key) != registration:
                    await self._put(client, registration)
            self._start_checks(client)
        log.info("config reloaded: %d endpoints", len(after))

    async def _leave(self, client: Client) -> None:
        """Drain when asked (not ready, then wait), then delete the lease: the endpoints leave
        DNS, the API and the balancer at once."""
        if self.lease is None:
            return
        try:
            if self.config.drain:
                for registration in self.config.registrations:
                    await client.register(registration.namespace, registration.name,
                                          registration.id, registration.body(self.lease, False))
                log.info("draining for %g s", self.config.drain)
                await asyncio.sleep(self.config.drain)
            await client.delete_lease(self.lease)
            log.info("lease %s deleted: the endpoints are gone", self.lease)
        except (ApiError, Unreachable) as error:
            log.warning("could not delete lease %s (%s): it expires within %d s", self.lease,
                        error, self.config.ttl)


async def _either(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


def main(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    try:
        config = from_args(args, env)
    except AgentConfigError as error:
        print(f"sdns agent: {error}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop, hangup = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
        agent = Agent(config, reload=lambda: from_args(args, env))
        await agent.run(stop, hangup)

    asyncio.run(run())
    return 0
