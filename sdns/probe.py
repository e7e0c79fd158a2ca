"""One probe of a workload, for the server's active checks and the agent's local ones: an HTTP
GET (2xx or 3xx passes), a TCP connection, or a command (exit status 0 passes). Each answers
whether it passed and what it saw, cut to ``MAX_OUTPUT`` characters. ``Run`` turns results
into a status, as a readiness probe does."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from sdns.model import HealthStatus

MAX_OUTPUT = 200


def _said(passed: bool, output: str) -> tuple[bool, str]:
    return passed, output[:MAX_OUTPUT]


def _failure(error: BaseException, timeout: float) -> tuple[bool, str]:
    if isinstance(error, TimeoutError):
        return _said(False, f"timed out after {timeout:g} s")
    return _said(False, str(error) or type(error).__name__)


async def http(session: aiohttp.ClientSession, ip: str, port: int, path: str,
               timeout: float) -> tuple[bool, str]:
    host = f"[{ip}]" if ":" in ip else ip
    try:
        async with session.get(f"http://{host}:{port}{path}", allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
            return _said(200 <= reply.status < 400, f"HTTP {reply.status}")
    except (TimeoutError, OSError, aiohttp.ClientError) as error:
        return _failure(error, timeout)


async def tcp(ip: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
    except (TimeoutError, OSError) as error:
        return _failure(error, timeout)
    writer.close()
    return _said(True, "connected")


async def command(argv: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    except OSError as error:
        return _failure(error, timeout)
    try:
        code = await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError as error:
        process.kill()
        await process.wait()
        return _failure(error, timeout)
    return _said(code == 0, f"exit status {code}")


def session() -> aiohttp.ClientSession:
    """For HTTP probes: a new connection each, as a fresh client would make."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))


@dataclass
class Run:
    """The results of one check in a row: ``rise`` passes make it passing, ``fall`` failures
    critical; it starts unknown."""

    passes: int = 0
    failures: int = 0

    def status(self, passed: bool, rise: int, fall: int, current: HealthStatus) -> HealthStatus:
        """The status after ``passed``, from ``current``."""
        if passed:
            self.passes, self.failures = self.passes + 1, 0
            if current is not HealthStatus.PASSING and self.passes >= rise:
                return HealthStatus.PASSING
        else:
            self.passes, self.failures = 0, self.failures + 1
            if current is not HealthStatus.CRITICAL and self.failures >= fall:
                return HealthStatus.CRITICAL
        return current
