"""The ``sdns`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from sdns import config as configuration
from sdns.server import StartupError, serve

DESCRIPTION = """\
sdns: DNS-based service discovery. Services and endpoints registered over the HTTP API
are answered over DNS following the Kubernetes DNS schema (<svc>.<ns>.svc.<zone>)."""

SERVE_EPILOG = """\
Each setting is taken from, highest first: the flag, the environment variable SDNS_<NAME>
(for example SDNS_DNS_ADDR), the --config TOML file (keys as the flag names, e.g. dns-addr),
then the built-in default."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdns", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser(
        "serve", help="run the DNS server and the HTTP API", description=DESCRIPTION,
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = configuration.Config()
    serve_cmd.add_argument("--config", metavar="FILE", help="TOML file, e.g. conf/sdns.toml")
    serve_cmd.add_argument("--backend",
                           help=f"where registrations live (default {defaults.backend})")
    serve_cmd.add_argument("--dns-addr", metavar="HOST:PORT",
                           help=f"DNS listen address, UDP and TCP (default {defaults.dns_addr})")
    serve_cmd.add_argument("--api-addr", metavar="HOST:PORT",
                           help=f"HTTP API listen address (default {defaults.api_addr})")
    serve_cmd.add_argument("--zone", help=f"cluster domain (default {defaults.zone})")
    serve_cmd.add_argument("--service-cidr", metavar="CIDR",
                           help=f"range clusterIPs come from (default {defaults.service_cidr})")
    serve_cmd.add_argument("--ttl", metavar="SECONDS",
                           help=f"TTL of DNS records (default {defaults.ttl})")
    serve_cmd.add_argument("--etcd-endpoints", metavar="HOST:PORT[,...]",
                           help="etcd members, for --backend etcd "
                                f"(default {','.join(defaults.etcd_endpoints)})")
    serve_cmd.add_argument("--zk-hosts", metavar="HOST:PORT[,...]",
                           help="ZooKeeper servers, for --backend zookeeper "
                                f"(default {','.join(defaults.zk_hosts)})")
    serve_cmd.add_argument("--prefix", help="key prefix in etcd or ZooKeeper, so installations "
                                            f"can share a cluster (default {defaults.prefix})")
    serve_cmd.add_argument("--log-level", default="info",
                           choices=["debug", "info", "warning", "error"])
    return parser


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flags = {name: getattr(args, name) for name in
             ("backend", "dns_addr", "api_addr", "zone", "service_cidr", "ttl",
              "etcd_endpoints", "zk_hosts", "prefix")}
    try:
        config = configuration.load(args.config, os.environ, flags)
        _run(serve(config))
    except (configuration.ConfigError, ValueError) as error:
        print(f"sdns: invalid configuration: {error}", file=sys.stderr)
        return 2
    except StartupError as error:
        print(f"sdns: {error}", file=sys.stderr)
        return 1
    return 0
