"""The dashboard in a real browser: Debian's chromium driven by Playwright (no browser
download). Every test also checks the page logged no error."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.support import Api, SdnsProcess

ROOT = Path(__file__).resolve().parents[2]
MakeSdns = Callable[..., SdnsProcess]


@dataclass
class Tab:
    page: Any
    errors: list[str] = field(default_factory=list)

    def rows(self) -> list[str]:
        return self.page.locator("#rows .row .cell.name").all_inner_texts()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[SdnsProcess], Tab]]:
    contexts = []

    def open_(process: SdnsProcess) -> Tab:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)
        tab = Tab(context.new_page())
        tab.page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error"
                    else None)
        tab.page.on("pageerror", lambda e: tab.errors.append(str(e)))
        tab.page.goto(process.api.base + "/")  # redirected to /ui
        return tab

    yield open_
    for context in contexts:
        context.close()


def _register(api: Api, namespace: str, name: str, ip: str, **endpoint: object) -> None:
    reply = api.put(f"/v1/services/{namespace}/{name}/endpoints/{name}-1",
                    {"ip": ip, "ports": {"http": 8080}, **endpoint})
    assert reply.status in (200, 201), reply.body


def test_the_page_lists_and_follows_the_registry(make_sdns: MakeSdns, open_page) -> None:
    process = make_sdns("--balancer", "userspace", "--service-cidr", "10.96.0.0/16")
    for i, name in enumerate(("cart", "checkout", "search")):
        _register(process.api, "shop", name, f"10.244.1.{i + 1}", ttl=300 if i == 0 else 0)
    _register(process.api, "ops", "grafana", "10.244.2.1")
    tab = open_page(process)
    page = tab.page
    assert page.url.endswith("/ui")
    page.wait_for_selector("#rows .row")
    assert sorted(tab.rows()) == ["cart", "checkout", "grafana", "search"]
    page.wait_for_function("document.getElementById('live').textContent === 'live'")
    assert page.inner_text("#count-services") == "4"
    assert page.inner_text("#replicas") == "1"
    assert page.inner_text("#store") == "store up"

    _register(process.api, "shop", "payments", "10.244.1.9")  # appears within 1 s
    page.wait_for_selector("#rows .row[data-key='shop/payments']", timeout=1000)
    assert page.inner_text("#count-services") == "5"
    assert page.inner_text("#rows .row[data-key='shop/payments'] .count") == "1/1"
    assert "changed" in page.get_attribute("#rows .row[data-key='shop/payments']", "class")
    process.api.delete("/v1/services/shop/payments")  # and leaves within 1 s
    page.wait_for_selector("#rows .row[data-key='shop/payments']", state="detached",
                           timeout=1000)

    # a checked endpoint shows its health, and a critical one counts as such
    process.api.put("/v1/services/ops/grafana/endpoints/grafana-1", {
        "ip": "127.0.0.1", "ports": {"http": 9}, "check": {"type": "tcp", "interval": 1,
                                                            "fall": 1}})
    page.wait_for_function("document.getElementById('count-critical').textContent === '1'",
                           timeout=5000)
    assert page.inner_text("#rows .row[data-key='ops/grafana'] .count") == "0/1"
    page.click("#rows .row[data-key='ops/grafana']")
    page.wait_for_selector("#detail-endpoints td.health-critical")
    page.click("#rows .row[data-key='shop/cart']")
    page.wait_for_selector("#detail-endpoints td.countdown")
    assert "dig @127.0.0.1 -p" in page.inner_text("#detail-names")
    assert "cart.shop.svc.cluster.local" in page.inner_text("#detail-names")
    page.wait_for_function("document.getElementById('detail-balancer').textContent"
                           ".includes('10.244.1.1:8080')")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ROOT / "docs" / "dashboard.png"))
    assert tab.errors == []


def test_a_ttl_counts_down(make_sdns: MakeSdns, open_page) -> None:
    process = make_sdns()
    _register(process.api, "shop", "cart", "10.244.1.1", ttl=30)
    tab = open_page(process)
    tab.page.click("#rows .row[data-key='shop/cart']")
    cell = tab.page.locator("#detail-endpoints td.countdown")
    cell.wait_for()
    first = int(cell.inner_text().rstrip("s"))
    assert 25 <= first <= 30
    tab.page.wait_for_function(
        f"parseInt(document.querySelector('td.countdown').textContent) <= {first - 2}",
        timeout=4000)
    assert tab.errors == []


def test_the_filter_and_the_namespace_picker(make_sdns: MakeSdns, open_page) -> None:
    process = make_sdns()
    for namespace, name in (("shop", "cart"), ("shop", "search"), ("ops", "search")):
        _register(process.api, namespace, name, "10.244.3.1")
    tab = open_page(process)
    page = tab.page
    page.wait_for_selector("#rows .row")
    page.fill("#filter", "search")
    page.wait_for_function("document.querySelectorAll('#rows .row').length === 2")
    assert tab.rows() == ["search", "search"]
    page.select_option("#namespace", "ops")
    page.wait_for_function("document.querySelectorAll('#rows .row').length === 1")
    assert page.inner_text("#rows .row") .startswith("ops")
    page.fill("#filter", "")
    page.select_option("#namespace", "")
    page.wait_for_function("document.querySelectorAll('#rows .row').length === 3")
    page.click("button[data-sort='name']")
    page.click("button[data-sort='name']")  # descending
    assert tab.rows() == ["search", "search", "cart"]
    assert tab.errors == []


def test_a_token_protected_api_prompts_then_shows(make_sdns: MakeSdns, open_page,
                                                  tmp_path: Path) -> None:
    secret = "dashboard-secret-0123456789"
    path = tmp_path / "tokens.toml"
    path.write_text(f'[[token]]\nname = "ui"\nsecret = "{secret}"\nscope = "read"\n'
                    f'[[token]]\nname = "w"\nsecret = "writer-{secret}"\nscope = "write"\n')
    process = make_sdns("--tokens", str(path))
    _register(Api(process.api.base, f"writer-{secret}"), "shop", "cart", "10.244.4.1")
    tab = open_page(process)
    page = tab.page
    page.wait_for_selector("dialog#login[open]")
    assert page.locator("#rows .row").count() == 0
    page.fill("#token", secret)
    page.click("#login-form button")
    page.wait_for_selector("#rows .row[data-key='shop/cart']")
    assert tab.errors == []


def test_reconnecting_shows_when_the_stream_drops(make_sdns: MakeSdns, open_page) -> None:
    process = make_sdns()
    tab = open_page(process)
    tab.page.wait_for_function("document.getElementById('live').textContent === 'live'")
    process.stop()
    tab.page.wait_for_function(
        "document.getElementById('live').textContent === 'reconnecting…'", timeout=5000)
    # the browser reports the refused reconnections; they are what the indicator says
    assert all("ERR_CONNECTION_REFUSED" in e or "Failed to fetch" in e for e in tab.errors)


def test_five_thousand_services_render_only_what_is_visible(make_sdns: MakeSdns,
                                                            open_page) -> None:
    process = make_sdns()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: process.api.put(f"/v1/services/load/svc-{i:04d}", {}),
                      range(5000)))
    tab = open_page(process)
    page = tab.page
    page.wait_for_function("document.getElementById('shown').textContent === '5000 of 5000'",
                           timeout=10000)
    assert page.locator("#rows .row").count() < 60
    started = time.monotonic()
    page.eval_on_selector("#viewport", "v => v.scrollTop = v.scrollHeight")
    page.wait_for_selector("#rows .row[data-key='load/svc-4999']", timeout=2000)
    assert time.monotonic() - started < 2
    assert page.locator("#rows .row").count() < 60
    assert tab.errors == []
