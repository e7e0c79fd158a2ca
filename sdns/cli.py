"""The ``sdns`` command."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from sdns import agent, logs, metrics
from sdns import commands as client_commands
from sdns import config as configuration
from sdns.daemon import StartupError, serve
from sdns.errors import Invalid, SdnsError

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
    for name, setting in configuration.SETTINGS.items():
        flag, help_text = "--" + name.replace("_", "-"), \
            f"{setting.help} (default {configuration.default_text(name)})"
        if setting.parse is configuration.boolean:
            serve_cmd.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            serve_cmd.add_argument(flag, metavar=setting.metavar, choices=setting.choices,
                                   help=help_text)
    serve_cmd.add_argument("--dns-only", action="store_true", help=argparse.SUPPRESS)
    serve_cmd.add_argument("--metrics-reports", metavar="DIR", help=argparse.SUPPRESS)
    serve_cmd.add_argument("--log-level", default="info",
                           choices=["debug", "info", "warning", "error"])
    client_commands.add_to(commands)
    agent.add_to(commands)
    resolv = commands.add_parser(
        "resolv-conf", help="print the resolv.conf of a container in a namespace",
        description="Print the resolv.conf that makes a container in NAMESPACE use sdns: "
                    "short names (web, web.other) resolve through the search path, as in "
                    "Kubernetes.")
    resolv.add_argument("--namespace", required=True, help="the container's namespace")
    resolv.add_argument("--nameserver", metavar="IP",
                        help="sdns's address as containers reach it (default: the host of "
                             "dns-addr)")
    resolv.add_argument("--config", metavar="FILE", help="TOML file, for zone and dns-addr")
    resolv.add_argument("--zone", help=f"cluster domain (default {defaults.zone})")
    return parser


def resolv_conf(namespace: str, zone: str, nameserver: str) -> str:
    search = f"{namespace}.svc.{zone} svc.{zone} {zone}"
    return f"nameserver {nameserver}\nsearch {search}\noptions ndots:5\n"


def _print_resolv_conf(args: argparse.Namespace) -> int:
    from sdns.validation import label

    config = configuration.load(args.config, os.environ, {"zone": args.zone})
    label(args.namespace, "namespace")
    nameserver = args.nameserver or config.dns_addr.host
    if ipaddress.ip_address(nameserver).is_unspecified:
        raise ValueError(f"dns-addr listens on {nameserver}: say --nameserver")
    if config.dns_addr.port != 53:
        print(f"sdns: note: resolvers ask port 53, and dns-addr is {config.dns_addr}",
              file=sys.stderr)
    sys.stdout.write(resolv_conf(args.namespace, config.zone, nameserver))
    return 0


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _worker_argv(argv: Sequence[str] | None) -> list[str]:
    """The command line of a DNS worker: this one, serving DNS only."""
    return [sys.executable, "-m", "sdns", *(sys.argv[1:] if argv is None else argv), "--dns-only"]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if hasattr(args, "run"):
        return client_commands.run(args)
    if args.command == "agent":
        logs.configure("info", "text")
        return agent.main(args)
    if args.command == "resolv-conf":
        try:
            return _print_resolv_conf(args)
        except (configuration.ConfigError, ValueError, Invalid) as error:
            print(f"sdns: {getattr(error, 'reason', error)}", file=sys.stderr)
            return 2
    flags = {name: getattr(args, name) for name in configuration.SETTINGS}
    try:
        config = configuration.load(args.config, os.environ, flags)
        logs.configure(args.log_level, config.log_format)
        reports = None if args.metrics_reports is None else \
            metrics.WorkerReports(Path(args.metrics_reports))
        _run(serve(config, None if args.dns_only else _worker_argv(argv), reports))
    except (configuration.ConfigError, ValueError) as error:
        print(f"sdns: invalid configuration: {error}", file=sys.stderr)
        return 2
    except StartupError as error:
        print(f"sdns: {error}", file=sys.stderr)
        return 1
    except SdnsError as error:  # the backend did not answer at start
        print(f"sdns: {error.reason}", file=sys.stderr)
        return 1
    return 0
