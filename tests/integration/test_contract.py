"""The HTTP contract, fuzzed: schemathesis against a live sdns (memory backend), from the
OpenAPI document it serves. No 5xx, every response as documented, invalid input refused, and a
refused write stores nothing (tests/helpers/contract_hooks.py). The watch stream stays open
until the client hangs up, so it is left out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.support import SdnsProcess

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("mode", "examples"), [("negative", 100), ("positive", 100)])
def test_the_api_keeps_its_contract(make_sdns, mode: str, examples: int) -> None:
    if not SCHEMATHESIS.exists():
        pytest.skip("schemathesis is not installed (make test installs it)")
    process: SdnsProcess = make_sdns()
    # something to find, so that operations on existing objects reach their logic
    process.api.put("/v1/services/default/web/endpoints/e1", {"ip": "10.1.0.1",
                                                             "ports": {"http": 80}})
    lease = process.api.post("/v1/leases", {"ttl": 3600}).body["id"]
    process.api.put("/v1/services/default/web/endpoints/e2", {"ip": "10.1.0.2", "lease": lease})
    result = subprocess.run(
        [str(SCHEMATHESIS), "run", process.api.base + "/openapi.json", "--checks", "all",
         # valid requests may still be refused: a 404 for what is gone, a 409 for a clash
         "--exclude-checks", "positive_data_acceptance",
         "--exclude-path", "/v1/watch", "--mode", mode, "-n", str(examples), "--seed", "1053",
         "--phases", "examples,coverage,fuzzing,stateful", "--max-response-time", "2"],
        capture_output=True, text=True, timeout=220, cwd=ROOT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.helpers.contract_hooks",
             "SDNS_CONTRACT_BASE": process.api.base})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert process.process.poll() is None
