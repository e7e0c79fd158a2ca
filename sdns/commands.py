"""The client subcommands of ``sdns`` (ls, get, register, deregister, watch, lease), over
``sdns.client``: human tables by default, the API's JSON with ``--json``.

Exit codes: 0 done, 1 the server answered an error (printed), 2 a usage error, 3 the server
could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sdns.client import DEFAULT_SERVER, ApiError, Client, Unreachable

OK, SERVER_ERROR, USAGE, UNREACHABLE = 0, 1, 2, 3
Command = Callable[[Client, argparse.Namespace], Awaitable[Any]]


def add_to(commands: Any) -> None:
    """Add the client subcommands to the ``sdns`` parser's ``commands``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=os.environ.get("SDNS_SERVER", DEFAULT_SERVER),
                        metavar="URL", help="the sdns API (default $SDNS_SERVER, else "
                        f"{DEFAULT_SERVER})")
    common.add_argument("--token", default=os.environ.get("SDNS_TOKEN"),
                        help="API token (default $SDNS_TOKEN)")
    common.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="tables for people (default) or the API's JSON")
    common.add_argument("--json", dest="output", action="store_const", const="json",
                        help="the same as -o json")

    ls = commands.add_parser("ls", parents=[common], help="list services")
    ls.add_argument("namespace", nargs="?", help="only this namespace")
    ls.set_defaults(run=_ls)

    get = commands.add_parser("get", parents=[common], help="a service and its endpoints")
    get.add_argument("service", type=_service, metavar="NS/NAME")
    get.set_defaults(run=_get)

    register = commands.add_parser(
        "register", parents=[common], help="register (or replace) an endpoint",
        description="Register an endpoint, creating the service when there is none.")
    register.add_argument("service", type=_service, metavar="NS/NAME")
    register.add_argument("id")
    register.add_argument("--ip", required=True)
    register.add_argument("--port", action="append", type=_port, default=[],
                          metavar="NAME=NUMBER", help="a named port (repeat for several)")
    register.add_argument("--hostname")
    register.add_argument("--not-ready", action="store_true", help="registered, not served")
    lives = register.add_mutually_exclusive_group()
    lives.add_argument("--ttl", type=int, metavar="SECONDS",
                       help="gone unless a heartbeat renews it within SECONDS")
    lives.add_argument("--lease", metavar="ID", help="lives as long as this lease")
    register.set_defaults(run=_register)

    deregister = commands.add_parser("deregister", parents=[common],
                                     help="remove an endpoint, or a whole service")
    deregister.add_argument("service", type=_service, metavar="NS/NAME")
    deregister.add_argument("id", nargs="?", help="the endpoint (without: the service)")
    deregister.set_defaults(run=_deregister)

    watch = commands.add_parser("watch", parents=[common],
                                help="print every change as it happens")
    watch.add_argument("--since", type=int, metavar="REVISION",
                       help="from this revision (default: the next change)")
    watch.set_defaults(run=_watch)

    lease = commands.add_parser("lease", help="create, renew, show or delete a lease")
    actions = lease.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="a new lease")
    create.add_argument("--ttl", type=int, required=True, metavar="SECONDS")
    create.set_defaults(run=_lease_create)
    for action, run in (("renew", _lease_renew), ("get", _lease_get),
                        ("delete", _lease_delete)):
        sub = actions.add_parser(action, parents=[common], help=f"{action} a lease")
        sub.add_argument("lease_id", metavar="ID")
        sub.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the parsed client subcommand; its exit code."""
    try:
        return asyncio.run(_with_client(args.run, args))
    except ApiError as error:
        print(f"sdns: {error}", file=sys.stderr)
        return SERVER_ERROR
    except Unreachable as error:
        print(f"sdns: {error}", file=sys.stderr)
        return UNREACHABLE
    except KeyboardInterrupt:
        return OK


async def _with_client(command: Command, args: argparse.Namespace) -> int:
    async with Client(args.server, args.token) as client:
        result = await command(client, args)
    return OK if result is None else int(result)


def _service(text: str) -> tuple[str, str]:
    namespace, slash, name = text.partition("/")
    if not slash or not namespace or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name


def _port(text: str) -> tuple[str, int]:
    name, equals, number = text.partition("=")
    if not equals or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=NUMBER, e.g. http=8080")
    return name, int(number)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows,
                                                                        strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths,
                                                                        strict=True)).rstrip())


def _ports(service: dict[str, Any]) -> str:
    return ",".join(f"{p['name']}:{p['port']}/{p['protocol']}" for p in service["ports"]) or "-"


async def _ls(client: Client, args: argparse.Namespace) -> None:
    listed = await client.services(args.namespace)
    if args.output == "json":
        _print_json(listed)
        return
    _table(["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORTS"],
           [[s["namespace"], s["name"], s["type"],
             s["clusterIP"] or s["externalName"] or "-", _ports(s)]
            for s in listed["services"]])


async def _get(client: Client, args: argparse.Namespace) -> None:
    namespace, name = args.service
    service = await client.service(namespace, name)
    endpoints = await client.endpoints(namespace, name)
    if args.output == "json":
        _print_json({**service, "endpoints": endpoints})
        return
    print(f"{namespace}/{name}  {service['type']}  {service['clusterIP'] or '-'}  "
          f"{_ports(service)}")
    if endpoints:
        print()
        _table(["ID", "IP", "PORTS", "READY", "EXPIRES"],
               [[e["id"], e["ip"],
                 ",".join(f"{k}:{v}" for k, v in e["ports"].items()) or "-",
                 "yes" if e["ready"] else "no", e["expiresAt"] or "never"]
                for e in endpoints])


async def _register(client: Client, args: argparse.Namespace) -> None:
    namespace, name = args.service
    body: dict[str, Any] = {"ip": args.ip, "ports": dict(args.port),
                            "ready": not args.not_ready}
    if args.hostname:
        body["hostname"] = args.hostname
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.lease:
        body["lease"] = args.lease
    endpoint = await client.register(namespace, name, args.id, body)
    if args.output == "json":
        _print_json(endpoint)
    else:
        print(f"registered {namespace}/{name} {endpoint['id']} at {endpoint['ip']}")


async def _deregister(client: Client, args: argparse.Namespace) -> None:
    namespace, name = args.service
    if args.id is None:
        await client.delete_service(namespace, name)
        what = f"service {namespace}/{name}"
    else:
        await client.deregister(namespace, name, args.id)
        what = f"{namespace}/{name} {args.id}"
    if args.output != "json":
        print(f"deregistered {what}")


async def _watch(client: Client, args: argparse.Namespace) -> None:
    await client.ready()  # unreachable: exit 3 now rather than retry in silence
    async for event in client.watch(args.since):
        if args.output == "json":
            print(json.dumps(event), flush=True)
        elif event["action"] == "relist":
            print(f"{event['revision']}  relisted: {len(event['services'])} services",
                  flush=True)
        else:
            where = f"{event['namespace']}/{event['service']}"
            if event["kind"] == "endpoint":
                value = event["object"]
                detail = f" {event['id']}" + (f" {value['ip']}" if value else "")
            else:
                detail = f" {event['object']['clusterIP'] or '-'}" if event["object"] else ""
            print(f"{event['revision']}  {event['action']:<6} {event['kind']:<8} "
                  f"{where}{detail}", flush=True)


def _print_lease(lease: dict[str, Any], args: argparse.Namespace) -> None:
    if args.output == "json":
        _print_json(lease)
    else:
        held = f"  holds {lease['endpoints']}" if "endpoints" in lease else ""
        print(f"{lease['id']}  ttl {lease['ttl']}s  expires {lease['expiresAt']}{held}")


async def _lease_create(client: Client, args: argparse.Namespace) -> None:
    _print_lease(await client.create_lease(args.ttl), args)


async def _lease_renew(client: Client, args: argparse.Namespace) -> None:
    _print_lease(await client.renew_lease(args.lease_id), args)


async def _lease_get(client: Client, args: argparse.Namespace) -> None:
    _print_lease(await client.lease(args.lease_id), args)


async def _lease_delete(client: Client, args: argparse.Namespace) -> None:
    await client.delete_lease(args.lease_id)
    if args.output != "json":
        print(f"deleted lease {args.lease_id}")
