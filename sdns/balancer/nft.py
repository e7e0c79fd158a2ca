"""The nftables data plane: the whole VIP table as one ruleset in a table sdns owns, replaced
atomically with ``nft -f`` on every change, as kube-proxy's nftables mode does."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from sdns.balancer.table import Frontend

log = logging.getLogger(__name__)

TABLE = "sdns"


def render(frontends: list[Frontend], table: str = TABLE) -> str:
    """An nft script that replaces table ``inet <table>`` with DNAT rules for ``frontends``:
    each VIP:port spreads new connections round robin (``numgen inc mod N``) over its ready
    endpoints; a VIP:port without one rejects. Hooked for locally generated traffic (output)
    and for traffic passing through (prerouting)."""
    lines = [
        f"table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  chain services {",
    ]
    endpoint_chains: list[str] = []
    chains = 0
    for frontend in sorted(frontends, key=lambda f: (f.vip, f.port, f.protocol)):
        family = "ip" if ipaddress.ip_address(frontend.vip).version == 4 else "ip6"
        match = (f"{family} daddr {frontend.vip} {frontend.protocol.value.lower()} "
                 f"dport {frontend.port}")
        targets = [_target(b.ip, b.port) for b in frontend.backends
                   if (":" in b.ip) == (family == "ip6")]
        if not targets:
            lines.append(f"    {match} reject")
        elif len(targets) == 1:
            lines.append(f"    {match} dnat {family} to {targets[0]}")
        else:
            # one chain per endpoint, picked in turn for each new connection
            gotos = []
            for target in targets:
                chain = f"endpoint-{chains}"
                chains += 1
                protocol = frontend.protocol.value.lower()
                endpoint_chains += [f"  chain {chain} {{",
                                    f"    meta l4proto {protocol} dnat {family} to {target}",
                                    "  }"]
                gotos.append(f"{len(gotos)} : goto {chain}")
            lines.append(f"    {match} numgen inc mod {len(targets)} vmap "
                         f"{{ {', '.join(gotos)} }}")
    lines.append("  }")
    lines += endpoint_chains
    lines += [
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",  # dstnat
        "    jump services",
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority -100; policy accept;",  # dstnat
        "    jump services",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _target(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


async def apply(script: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "nft", "-f", "-", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate(script.encode())
    if process.returncode != 0:
        raise RuntimeError(f"nft rejected the ruleset: {err.decode().strip()}")


async def delete(table: str = TABLE) -> None:
    process = await asyncio.create_subprocess_exec(
        "nft", "delete", "table", "inet", table, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    await process.wait()
