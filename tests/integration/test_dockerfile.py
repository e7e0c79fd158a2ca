"""No engine runs here to build the image: check what can be checked of the Dockerfile."""

from __future__ import annotations

import json
from pathlib import Path

from sdns.cli import _parser
from sdns.config import load

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines()
            if line.startswith(name + " ")]


def test_every_copy_source_exists() -> None:
    sources = [part for line in _instructions("COPY") for part in line.split()[:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_entrypoint_config_loads() -> None:
    entrypoint = json.loads(_instructions("ENTRYPOINT")[0])
    assert entrypoint[:2] == ["sdns", "serve"]
    args = _parser().parse_args(entrypoint[1:])
    config = load(ROOT / args.config, {}, {"dns_addr": args.dns_addr, "api_addr": args.api_addr,
                                           "balancer": args.balancer})
    assert (config.dns_addr.port, config.api_addr.port) == (53, 8053)


def test_runs_unprivileged_and_exposes_dns_and_api() -> None:
    assert _instructions("USER") == ["sdns"]
    assert "cap_net_bind_service=+ep" in DOCKERFILE
    assert _instructions("EXPOSE") == ["53/udp 53/tcp 8053"]
    assert "/healthz" in _instructions("HEALTHCHECK")[0]
