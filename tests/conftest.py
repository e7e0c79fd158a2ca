from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import pytest
from support import SdnsProcess


@pytest.fixture(scope="session")
def sdns() -> Iterator[SdnsProcess]:
    """One sdns for the session (memory backend); tests keep apart by namespace."""
    process = SdnsProcess("--service-cidr", "10.96.0.0/16").start()
    yield process
    process.stop()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A namespace of this test's own, a DNS label derived from its name."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return name[-63:].strip("-")


@pytest.fixture(scope="session")
def dig_available() -> None:
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed (make test installs dnsutils)")
