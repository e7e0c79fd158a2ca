"""What counting for /metrics costs the hot path: the hot mix against this tree's sdns and
against sdns at an earlier commit (default: the one before metrics), alternating, same run.

The earlier sdns runs from a git worktree put first on PYTHONPATH, so both use this venv. Both
servers are pinned to core 0, dnsperf to core 1; medians of the alternations.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.qps import HOT, Server, _load, compare, query_files
from bench.report import ROOT, median, pin_to_server_core, table, write_section
from tests.helpers.support import SdnsProcess

BEFORE = "9db2535"  # the last commit before DNS counting


def _sdns(stack: ExitStack, pythonpath: str | None) -> SdnsProcess:
    env = {"PYTHONPATH": pythonpath} if pythonpath else None
    process = SdnsProcess("--service-cidr", "10.96.0.0/12", "--log-level", "warning",
                          env=env).start()
    stack.callback(process.stop)
    asyncio.run(_load(process.api.base, HOT))
    pin_to_server_core(process.process.pid)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default=BEFORE, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="sdns-bench-") as tmp:
        worktree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree),
                        args.before], check=True, capture_output=True)
        stack.callback(subprocess.run, ["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                        str(worktree)], capture_output=True)
        files = query_files(Path(tmp), HOT)
        now, before = _sdns(stack, None), _sdns(stack, str(worktree))
        servers = {"before": Server(before.dns_port, before.process.pid),
                   "counting": Server(now.dns_port, now.process.pid)}
        runs = compare(servers, files["hot"], args.rounds, args.seconds)
    qps = {name: median([r.qps for r in rs]) for name, rs in runs.items()}
    per_cpu = {name: median([r.qps / r.cpu for r in rs if r.cpu]) for name, rs in runs.items()}
    rows = [[name, f"{qps[name]:,.0f}", f"{per_cpu[name]:,.0f}",
             ", ".join(f"{r.qps:,.0f}" for r in runs[name])] for name in runs]
    write_section("counting", f"""
## What counting costs the hot path (warm)

`python -m bench counting` (sdns at {args.before}, before DNS counting, against this tree; the
hot mix, A and SRV of {HOT} services, {args.rounds} alternations of {args.seconds} s; warm: one
pass first).

{table(["sdns", "QPS (median)", "QPS per server CPU-second", "rounds"], rows)}

| figure | measured | target |
| --- | --- | --- |
| hot mix QPS, counting / before | {qps["counting"] / qps["before"]:.2f}x | >= 0.95x |
| per server CPU-second, counting / before | {per_cpu["counting"] / per_cpu["before"]:.2f}x | |
""")


if __name__ == "__main__":
    main()
