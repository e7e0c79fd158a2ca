"""Schemathesis hooks for the contract run (``SCHEMATHESIS_HOOKS``): a refused write stores
nothing. Before each write, the object it names (the service with its endpoints, or the lease)
is read; after a 4xx it must read the same. Endpoints with a ttl or lease, and short leases,
may expire in between, which is not the write's doing, so they are left out."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

import schemathesis

BASE = os.environ.get("SDNS_CONTRACT_BASE", "")
WRITES = {"PUT", "POST", "DELETE"}
_before: dict[int, Any] = {}


def _get(path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(BASE + path, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None


def _lasting(endpoints: Any) -> Any:
    """The endpoints that do not expire by themselves."""
    if not isinstance(endpoints, dict):
        return endpoints
    return [e for e in endpoints["endpoints"] if not e["ttl"] and not e["lease"]]


def _state(case: Any) -> Any:
    params = case.path_parameters or {}
    if "namespace" in params and "name" in params:
        service = f"/v1/services/{params['namespace']}/{params['name']}"
        return _get(service), _lasting(_get(service + "/endpoints")[1])
    if "id" in params and case.path.startswith("/v1/leases"):
        status, lease = _get(f"/v1/leases/{params['id']}")
        if lease is not None and lease["ttl"] < 60:
            return None  # it may expire during the call
        return status, None if lease is None else lease["endpoints"]
    return None


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: Any) -> None:
    if case.method.upper() in WRITES:
        _before[id(case)] = _state(case)


@schemathesis.check
def refused_writes_store_nothing(ctx: Any, response: Any, case: Any) -> None:
    before = _before.pop(id(case), None)
    if case.method.upper() not in WRITES or response.status_code < 400 or before is None:
        return
    after = _state(case)
    if after != before:
        raise AssertionError(f"a {response.status_code} to {case.method} {case.formatted_path} "
                             f"changed what is stored: {before!r} -> {after!r}")
