"""Shared by the benchmarks: percentiles, tables, and their section of docs/PERFORMANCE.md."""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERFORMANCE = ROOT / "docs" / "PERFORMANCE.md"


def pin_to_server_core(pid: int) -> None:
    """Every thread of process ``pid`` on core 0, the server's; the load runs on core 1."""
    subprocess.run(["taskset", "-apc", "0", str(pid)], check=True, capture_output=True)


def percentile(samples: Sequence[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def cpu_seconds(pid: int) -> float:
    """Time on a CPU of every live thread of ``pid`` so far, as the scheduler counts it in
    nanoseconds: ``/proc/PID/stat`` counts 10 ms ticks, a few percent of a first pass that
    lasts under a second. A thread that ends between two readings takes its time with it: the
    servers measured keep theirs."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _status_kb(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(field + r":\s+(\d+) kB", status).group(1))


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, markdown: str) -> None:
    """Replace the section between the markers for ``name`` (or append it)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = PERFORMANCE.read_text() if PERFORMANCE.exists() else "# Performance\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block + "\n"
    PERFORMANCE.write_text(text)
    print(markdown)
