"""A running sdns: the backend, the watcher, the DNS server and the HTTP API, wired together."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

import backends
from sdns.api.app import make_app
from sdns.cluster_ip import ClusterIPRange
from sdns.config import Config, HostPort
from sdns.dns.responder import Responder
from sdns.dns.server import DnsServer
from sdns.dns.zone import Zone
from sdns.registry import Registry
from sdns.watch import Watcher

log = logging.getLogger("sdns")


class StartupError(Exception):
    pass


def _listen_error(what: str, address: HostPort, error: OSError) -> StartupError:
    if error.errno == errno.EADDRINUSE:
        reason = "the address is already in use (is another sdns or DNS server running?)"
    elif error.errno == errno.EACCES:
        reason = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    else:
        reason = error.strerror or str(error)
    return StartupError(f"cannot listen for {what} on {address}: {reason}")


def _nameserver(address: HostPort) -> str | None:
    """The address ns.dns.<zone> points at, when DNS listens on one specific address."""
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return None
    return None if ip.is_unspecified else str(ip)


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Registry]:
    """sdns started with ``config``; stopped in reverse order on exit."""
    async with contextlib.AsyncExitStack() as stack:
        backend = backends.create(config)
        await backend.start()
        stack.push_async_callback(backend.close)

        watcher = Watcher(backend)
        responder = Responder(Zone(config.zone, config.ttl, watcher.view,
                                   _nameserver(config.dns_addr)))
        watcher.subscribe(responder)
        await watcher.start()
        stack.push_async_callback(watcher.close)

        dns = DnsServer(responder)
        try:
            await dns.start(config.dns_addr)
        except OSError as error:
            raise _listen_error("DNS", config.dns_addr, error) from None
        stack.push_async_callback(dns.close)

        registry = Registry(backend, watcher, ClusterIPRange(config.service_cidr))
        runner = web.AppRunner(make_app(registry), access_log=None, handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        stack.callback(watcher.end_streams)  # open watch requests would hold up the cleanup
        try:
            await web.TCPSite(runner, config.api_addr.host, config.api_addr.port).start()
        except OSError as error:
            raise _listen_error("the HTTP API", config.api_addr, error) from None

        log.info("sdns serving DNS on %s (udp+tcp) for zone %s, HTTP API on http://%s, "
                 "backend %s", config.dns_addr, config.zone, config.api_addr, config.backend)
        yield registry


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running(config):
        await stop.wait()
        log.info("sdns stopping")
