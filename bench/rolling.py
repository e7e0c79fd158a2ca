"""A rolling update of a headless service: what each step costs sdns as the service grows.

Each step registers a new endpoint and removes an old one (two changes), as a scheduler
replacing pods one by one does. The steps run once with nobody asking, and once with the
service's name asked over TCP after each step (the whole answer, as a client asks again after a
truncated UDP reply), which makes sdns answer anew from the changed service. sdns on core 0,
this client on core 1; sdns CPU from the scheduler's counts. Target (issue "Built for churn"):
a step not asked about costs the same at every size, so a rollout of n steps is O(n).
"""

from __future__ import annotations

import argparse
import os
import time

import dns.message
import dns.query

from bench.report import cpu_seconds, pin_to_server_core, table, write_section
from tests.helpers.support import SdnsProcess

NAME = "web.roll.svc.cluster.local"


def _step_costs(size: int, steps: int, asked: bool) -> float:
    """sdns CPU seconds per step of a rolling update of a headless service of ``size``."""
    process = SdnsProcess("--log-level", "warning").start()
    try:
        pin_to_server_core(process.process.pid)
        process.api.put("/v1/services/roll/web", {"clusterIP": "None",
                                                  "ports": [{"name": "http", "port": 80}]})
        old = [{"id": f"old{i}", "ip": f"10.1.{i // 250}.{i % 250 + 1}"} for i in range(size)]
        assert process.api.put("/v1/services/roll/web/endpoints",
                               {"endpoints": old}).status in (200, 201)
        query = dns.message.make_query(NAME, "A")
        first = dns.query.tcp(query, "127.0.0.1", port=process.dns_port, timeout=10)
        assert sum(len(rrset) for rrset in first.answer) == size
        before = cpu_seconds(process.process.pid)
        for i in range(steps):
            process.api.put(f"/v1/services/roll/web/endpoints/new{i}",
                            {"ip": f"10.2.{i // 250}.{i % 250 + 1}"})
            process.api.delete(f"/v1/services/roll/web/endpoints/old{i}")
            if asked:
                reply = dns.query.tcp(query, "127.0.0.1", port=process.dns_port, timeout=10)
                assert sum(len(rrset) for rrset in reply.answer) == size
        return (cpu_seconds(process.process.pid) - before) / steps
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="500,2000,4000")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    sizes = [int(size) for size in args.sizes.split(",")]
    started = time.monotonic()
    costs = {(size, asked): _step_costs(size, args.steps, asked)
             for size in sizes for asked in (False, True)}
    rows = [[f"{size:,}", f"{costs[size, False] * 1e6:,.0f}",
             f"{costs[size, True] * 1e6:,.0f}",
             f"{(costs[size, True] - costs[size, False]) / size * 1e6:.2f}"] for size in sizes]
    flat = costs[sizes[-1], False] / costs[sizes[0], False]
    write_section("rolling", "\n\n".join([
        "## Rolling updates of a headless service",
        f"`python -m bench rolling --sizes {args.sizes} --steps {args.steps}`, "
        f"{time.strftime('%Y-%m-%d')}, {time.monotonic() - started:.0f} s: each step registers "
        "a new endpoint and removes an old one; sdns CPU per step, with nobody asking, and "
        "with the service's name asked over TCP after each step (every address, answered "
        "anew from the changed service).",
        table(["endpoints", "us per step, not asked", "us per step, asked",
               "us per endpoint to answer anew"], rows),
        f"A step not asked about, {sizes[-1]:,} endpoints against {sizes[0]:,}: {flat:.2f}x "
        "(target: about 1x, a rollout O(n)).",
    ]))


if __name__ == "__main__":
    main()
