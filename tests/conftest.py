from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.servers import Etcd, ZooKeeper, backend_args, running
from tests.helpers.support import SdnsProcess

BACKENDS = ["memory", "etcd", "zookeeper"]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[Etcd]:
    with running(Etcd) as server:
        yield server


@pytest.fixture(scope="session")
def zookeeper_server() -> Iterator[ZooKeeper]:
    with running(ZooKeeper) as server:
        yield server


@pytest.fixture(scope="session", params=BACKENDS)
def sdns(request: pytest.FixtureRequest) -> Iterator[SdnsProcess]:
    """One sdns per backend for the session; tests keep apart by namespace."""
    process = SdnsProcess("--service-cidr", "10.96.0.0/16,fd00:96::/112",
                          *backend_args(request, request.param)).start()
    yield process
    process.stop()


@pytest.fixture
def make_sdns(request: pytest.FixtureRequest) -> Iterator[Callable[..., SdnsProcess]]:
    """Start extra sdns processes for one test; all are stopped at its end."""
    started: list[SdnsProcess] = []

    def make(*args: str, env: dict[str, str] | None = None) -> SdnsProcess:
        process = SdnsProcess(*args, env=env).start()
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A namespace of this test's own, a DNS label derived from its name."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.originalname.lower()).strip("-")
    return name[-63:].strip("-")


@pytest.fixture(scope="session")
def dig_available() -> None:
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed (make test installs dnsutils)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (no browser download); one per test module, so
    that its event loop is gone before other modules' asyncio tests run."""
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (make test installs Debian's)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--no-sandbox"])
        yield launched
        launched.close()
