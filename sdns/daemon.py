"""A running sdns: the backend, the watcher, the DNS server and the HTTP API, wired together."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from sdns import metrics, store
from sdns.api import renewals
from sdns.api.app import make_app
from sdns.api.tokens import TokenFile, TokensError
from sdns.balancer.balancer import Balancer
from sdns.checks import Checker
from sdns.cluster_ip import ClusterIPRanges
from sdns.config import Config, HostPort, upstreams
from sdns.dns.forward import Forwarder, ForwardSettings
from sdns.dns.querylog import QueryLog
from sdns.dns.responder import Responder
from sdns.dns.server import DnsServer
from sdns.dns.zone import Zone
from sdns.preservation import Preservation
from sdns.preservation import Settings as PreservationSettings
from sdns.registry import Registry
from sdns.replicas import Presence, replica_name
from sdns.tasks import cancel
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


def _loopback(address: HostPort) -> bool:
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return address.host == "localhost"


def _tokens(config: Config) -> TokenFile | None:
    """The API's tokens, reloaded on SIGHUP; None (and a warning if it matters) without."""
    if config.tokens is None:
        if not _loopback(config.api_addr):
            log.warning("the HTTP API listens on %s without tokens: anyone who reaches it can "
                        "register or delete any service (see --tokens)", config.api_addr)
        return None
    try:
        tokens = TokenFile(Path(config.tokens))
    except TokensError as error:
        raise StartupError(str(error)) from None

    def reload() -> None:
        try:
            log.info("tokens reloaded from %s: %d tokens", tokens.path, tokens.reload())
        except TokensError as error:
            log.error("tokens not reloaded, the previous ones stay in force: %s", error)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    return tokens


def _dns_family(address: HostPort) -> str:
    """The family label of DNS metrics, as CoreDNS writes it: 1 for IPv4, 2 for IPv6."""
    return "2" if ":" in address.host else "1"


async def _report(reports: metrics.WorkerReports, responder: Responder) -> None:
    """A DNS worker's counts, written where the primary reads them at each scrape."""
    while True:
        reports.write(metrics.dns_counts(responder))
        await asyncio.sleep(metrics.REPORT_SECONDS)


@contextlib.asynccontextmanager
async def running(config: Config, *, api: bool = True,
                  reports: metrics.WorkerReports | None = None) -> AsyncIterator[Registry]:
    """sdns started with ``config``; stopped in reverse order on exit. Without ``api``, a DNS
    worker: DNS and the watcher that feeds it, writing its counts to ``reports``; with ``api``,
    ``reports`` is where the workers' counts are read."""
    async with contextlib.AsyncExitStack() as stack:
        tokens = _tokens(config) if api else None
        if tokens is not None:
            stack.callback(asyncio.get_running_loop().remove_signal_handler, signal.SIGHUP)
        backend = store.create(config)
        await backend.start()
        stack.push_async_callback(backend.close)

        watcher = Watcher(backend, Preservation(PreservationSettings(
            config.self_preservation, config.self_preservation_threshold,
            config.self_preservation_max)))
        forward_to = upstreams(config)
        forwarder = Forwarder(ForwardSettings(
            tuple(forward_to), min_ttl=config.forward_min_ttl, max_ttl=config.forward_max_ttl,
            stale_seconds=config.serve_stale)) if forward_to else None
        cluster_ips = ClusterIPRanges(config.service_cidr)
        zone = Zone(config.zone, config.ttl, watcher.view, _nameserver(config.dns_addr),
                    cluster_ips.networks)
        responder = Responder(zone, config.cache_mb * 1024 * 1024,
                              forwarder=forwarder, allow=config.forward_allow)
        watcher.subscribe(responder)
        await watcher.start()
        stack.push_async_callback(watcher.close)

        dns = DnsServer(responder, shared_port=config.workers > 1,
                        querylog=QueryLog() if config.log_queries else None)
        try:
            await dns.start(config.dns_addr)
        except OSError as error:
            raise _listen_error("DNS", config.dns_addr, error) from None
        stack.push_async_callback(dns.close)

        registry = Registry(backend, watcher, cluster_ips,
                            deregister_after=config.check_deregister_after or None)
        if not api:
            if reports is not None:
                reporting = asyncio.create_task(_report(reports, responder))
                stack.push_async_callback(cancel, reporting)
            log.info("sdns DNS worker serving %s", config.dns_addr)
            yield registry
            return
        balancer = Balancer(config.balancer, watcher.view, config.service_cidr,
                            config.balancer_sync)
        if config.balancer != "off":
            watcher.subscribe(balancer)
            await balancer.start()
            stack.push_async_callback(balancer.close)
        collector = metrics.ServerCollector(
            responder, _dns_family(config.dns_addr), watcher,
            balancer if config.balancer == "userspace" else None, reports)
        metrics.REGISTRY.register(collector)
        stack.callback(metrics.REGISTRY.unregister, collector)
        presence = Presence(backend, replica_name(config.api_addr))
        await presence.start()
        stack.push_async_callback(presence.close)
        checker = Checker(registry, presence.name)
        await checker.start()
        stack.push_async_callback(checker.close)
        about = {"version": metrics.VERSION, "backend": config.backend, "zone": config.zone,
                 "dnsAddr": str(config.dns_addr), "balancer": config.balancer,
                 "replica": presence.name}
        app = make_app(registry, balancer, tokens, config.metrics_open, about)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               keepalive_timeout=renewals.KEEPALIVE_SECONDS)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        stack.callback(watcher.end_streams)  # open watch requests would hold up the cleanup
        try:
            listener = await renewals.listen(app, runner.server, config.api_addr.host,
                                             config.api_addr.port)
        except OSError as error:
            raise _listen_error("the HTTP API", config.api_addr, error) from None
        stack.push_async_callback(listener.close)

        log.info("sdns serving DNS on %s (udp+tcp) for zone %s, HTTP API on http://%s, "
                 "backend %s, forwarding to %s", config.dns_addr, config.zone, config.api_addr,
                 config.backend, ", ".join(map(str, forward_to)) or "nobody")
        yield registry


async def serve(config: Config, worker_argv: list[str] | None = None,
                reports: metrics.WorkerReports | None = None) -> None:
    """Run until SIGINT or SIGTERM. With ``worker_argv``, this is the primary: it serves the API
    and starts ``config.workers - 1`` DNS workers with that command line. Without, a worker
    that writes its counts to ``reports``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    primary = worker_argv is not None
    if primary:
        reports = metrics.WorkerReports.create() if config.workers > 1 else None
    async with contextlib.AsyncExitStack() as stack:
        if primary and reports is not None:
            stack.callback(reports.remove)  # last, once the workers are gone
        await stack.enter_async_context(running(config, api=primary, reports=reports))
        if worker_argv is not None and reports is not None:
            for _ in range(config.workers - 1):
                worker = await asyncio.create_subprocess_exec(
                    *worker_argv, "--metrics-reports", str(reports.path))
                stack.push_async_callback(_stop_worker, worker)
        await stop.wait()
        log.info("sdns stopping")


async def _stop_worker(worker: asyncio.subprocess.Process) -> None:
    if worker.returncode is None:
        worker.terminate()
        try:
            await asyncio.wait_for(worker.wait(), 10)
        except TimeoutError:
            worker.kill()
            await worker.wait()
