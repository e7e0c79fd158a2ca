"""Tokens for the API: every call with no token, a wrong one, a read token and a namespace-limited
one, against a real sdns started with --tokens."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers.support import SDNS, Api, SdnsProcess, Watch, free_port, wait_until

ADMIN, READER, SHOP, SHOP_READER = ("admin-secret-0123456789", "reader-secret-0123456789",
                                    "shop-secret-0123456789", "shop-reader-secret-012345")
TOKENS = f"""
[[token]]
name = "admin"
secret = "{ADMIN}"
scope = "write"

[[token]]
name = "reader"
secret = "{READER}"
scope = "read"

[[token]]
name = "shop"
secret = "{SHOP}"
scope = "write"
namespaces = ["shop"]

[[token]]
name = "shop-reader"
secret = "{SHOP_READER}"
scope = "read"
namespaces = ["shop"]
"""
WRONG = "not-a-token-of-this-server"
NO = None


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.toml"
    path.write_text(TOKENS)
    return path


@pytest.fixture(scope="module")
def guarded(tokens_file: Path) -> SdnsProcess:
    process = SdnsProcess("--tokens", str(tokens_file)).start()
    admin = Api(process.api.base, ADMIN)
    for ns in ("shop", "other"):
        assert admin.put(f"/v1/services/{ns}/web/endpoints/e1", {"ip": "10.9.0.1"}).status == 201
    yield process
    process.stop()


def _as(process: SdnsProcess, token: str | None) -> Api:
    return Api(process.api.base, token)


# (method, path, body, {token: status})
CALLS = [
    ("GET", "/healthz", None, {NO: 200, WRONG: 200}),
    ("GET", "/readyz", None, {NO: 200, WRONG: 200}),
    ("GET", "/v1/services", None, {NO: 401, WRONG: 401, READER: 200, SHOP_READER: 200,
                                   SHOP: 200}),
    ("GET", "/v1/services?namespace=other", None, {READER: 200, SHOP_READER: 403}),
    ("GET", "/v1/services/shop/web", None, {NO: 401, READER: 200, SHOP_READER: 200}),
    ("GET", "/v1/services/other/web", None, {SHOP_READER: 403, SHOP: 403, READER: 200}),
    ("GET", "/v1/services/other/web/endpoints", None, {SHOP: 403, READER: 200}),
    ("GET", "/v1/balancer", None, {NO: 401, READER: 200, SHOP_READER: 200}),
    ("PUT", "/v1/services/shop/cart", {}, {NO: 401, WRONG: 401, READER: 403,
                                           SHOP_READER: 403, SHOP: 201}),
    ("PUT", "/v1/services/other/cart", {}, {READER: 403, SHOP: 403, SHOP_READER: 403,
                                            ADMIN: 201}),
    ("PUT", "/v1/services/shop/web/endpoints/e2", {"ip": "10.9.0.2"}, {READER: 403, SHOP: 201}),
    ("PUT", "/v1/services/other/web/endpoints/e2", {"ip": "10.9.0.2"}, {SHOP: 403, NO: 401}),
    ("PUT", "/v1/services/other/web/endpoints", {"endpoints": []}, {SHOP: 403, READER: 403}),
    ("POST", "/v1/services/other/web/endpoints/e1/heartbeat", None, {SHOP: 403, READER: 403}),
    ("DELETE", "/v1/services/other/web/endpoints/e1", None, {SHOP: 403, READER: 403, NO: 401}),
    ("DELETE", "/v1/services/other/web", None, {SHOP: 403, SHOP_READER: 403, WRONG: 401}),
    ("POST", "/v1/leases", {"ttl": 30}, {NO: 401, READER: 403, SHOP: 201}),
    ("DELETE", "/v1/leases/00000000000000aa", None, {SHOP: 403, READER: 403, ADMIN: 404}),
    ("GET", "/v1/leases/00000000000000aa", None, {NO: 401, SHOP_READER: 404}),
]


@pytest.mark.parametrize(("method", "path", "body", "expected"), CALLS,
                         ids=[f"{c[0]} {c[1]}" for c in CALLS])
def test_each_call_with_each_token(guarded: SdnsProcess, method: str, path: str, body: object,
                                   expected: dict[str | None, int]) -> None:
    for token, status in expected.items():
        reply = _as(guarded, token).request(method, path, body)
        assert reply.status == status, (token, reply.body)
        if status == 401:
            assert reply.body == {"error": "missing or unknown token"}
        if status == 403:
            assert "error" in reply.body and "may" in reply.body["error"]


def test_refused_writes_store_nothing(guarded: SdnsProcess) -> None:
    admin = _as(guarded, ADMIN)
    for token in (NO, WRONG, READER, SHOP):
        _as(guarded, token).put("/v1/services/other/refused/endpoints/e1", {"ip": "10.9.0.9"})
        _as(guarded, token).delete("/v1/services/other/web")
    assert admin.get("/v1/services/other/refused").status == 404
    assert [e["id"] for e in admin.get("/v1/services/other/web/endpoints").body["endpoints"]] \
        == ["e1"]
    assert guarded.query("refused.other.svc.cluster.local").rcode() == 3  # NXDOMAIN


def test_a_limited_token_sees_only_its_namespaces(guarded: SdnsProcess) -> None:
    listed = _as(guarded, SHOP_READER).get("/v1/services").body["services"]
    assert {s["namespace"] for s in listed} == {"shop"}
    everything = _as(guarded, READER).get("/v1/services").body["services"]
    assert {"shop", "other"} <= {s["namespace"] for s in everything}
    watch = Watch(_as(guarded, SHOP_READER), since=0)
    try:
        admin = _as(guarded, ADMIN)
        admin.put("/v1/services/other/late", {})
        admin.put("/v1/services/shop/late", {})
        event = watch.next()
        while event["service"] != "late":  # the history first: shop's only
            assert event["namespace"] == "shop"
            event = watch.next()
        assert event["namespace"] == "shop"
    finally:
        watch.close()


def test_the_x_sdns_token_header_works_too(guarded: SdnsProcess) -> None:
    api = Api(guarded.api.base)
    api.headers["X-Sdns-Token"] = READER
    assert api.get("/v1/services").status == 200
    api.headers["X-Sdns-Token"] = WRONG
    assert api.get("/v1/services").status == 401


def test_dns_needs_no_token(guarded: SdnsProcess) -> None:
    assert guarded.query("web.shop.svc.cluster.local").answer


def test_sighup_reloads_the_file(make_sdns, tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS)
    process = make_sdns(env={"SDNS_TOKENS_FILE": str(path)})
    assert _as(process, READER).get("/v1/services").status == 200
    path.write_text(TOKENS.replace(READER, "a-new-reader-secret-0123"))
    process.process.send_signal(signal.SIGHUP)
    wait_until(lambda: _as(process, READER).get("/v1/services").status == 401, timeout=5)
    assert _as(process, "a-new-reader-secret-0123").get("/v1/services").status == 200
    path.write_text("[[token]]\nname = \"broken\"\n")  # a bad file keeps the tokens in force
    process.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "tokens not reloaded" in process.output(), timeout=5)
    assert f"{path}: line 1" in process.output()
    assert _as(process, "a-new-reader-secret-0123").get("/v1/services").status == 200
    assert "secret-0123" not in process.output()  # secrets are never logged


def test_a_bad_tokens_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS.replace('scope = "read"', 'scope = "everything"', 1))
    result = subprocess.run([SDNS, "serve", "--tokens", str(path), "--api-addr",
                             f"127.0.0.1:{free_port()}", "--dns-addr", f"127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert f"{path}: line 7: token 'reader': scope must be" in result.stderr


def test_an_open_api_beyond_loopback_is_warned_about(make_sdns) -> None:
    port = free_port()
    process = SdnsProcess("--api-addr", f"0.0.0.0:{port}")
    process.api = Api(f"http://127.0.0.1:{port}")
    try:
        assert "without tokens" in process.start().output()
    finally:
        process.stop()
    quiet = make_sdns()
    assert "without tokens" not in quiet.output()
