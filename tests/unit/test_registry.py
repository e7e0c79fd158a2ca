"""Read-your-writes, said honestly: a write the local view does not reach in time is reported
as stored but not yet visible, never as an ordinary success."""

from __future__ import annotations

import pytest

from backends.memory import MemoryBackend
from sdns.cluster_ip import ClusterIPRanges
from sdns.errors import NotYetVisible, SdnsError
from sdns.model import Service, ServiceKey, ip_family
from sdns.registry import Registry
from sdns.watch import Watcher

KEY = ServiceKey("default", "web")


async def test_a_write_the_view_has_not_reached_says_so() -> None:
    backend = MemoryBackend()
    watcher = Watcher(backend)  # not following the backend: its view stays behind
    registry = Registry(backend, watcher, ClusterIPRanges(("10.96.0.0/16",)), visible_within=0.1)
    key = ServiceKey("default", "web")
    with pytest.raises(NotYetVisible) as raised:
        await registry.put_service(key, {})
    assert raised.value.status == 202
    assert raised.value.to_json()["revision"] == 1
    assert (await backend.get_service(key)) is not None  # stored all the same


async def test_a_write_the_view_reaches_returns_normally() -> None:
    backend = MemoryBackend()
    watcher = Watcher(backend)
    await watcher.start()
    try:
        registry = Registry(backend, watcher, ClusterIPRanges(("10.96.0.0/16",)))
        service, created = await registry.put_service(ServiceKey("default", "web"), {})
        assert created
        assert registry.service(service.key) == service
    finally:
        await watcher.close()


DUAL = ("10.96.0.0/16", "fd00:96::/112")


async def _registry(cidrs: tuple[str, ...]) -> tuple[Registry, Watcher]:
    backend = MemoryBackend()
    watcher = Watcher(backend)
    await watcher.start()
    return Registry(backend, watcher, ClusterIPRanges(cidrs)), watcher


def _shape(service: Service) -> tuple[list[str], list[str], str]:
    """(the family of each clusterIP, ipFamilies, ipFamilyPolicy) as the API shows them."""
    body = service.to_json()
    return ([ip_family(ip).value for ip in body["clusterIPs"]], body["ipFamilies"],
            body["ipFamilyPolicy"])


@pytest.mark.parametrize(("cidrs", "body", "shape"), [
    (DUAL, {}, (["IPv4"], ["IPv4"], "SingleStack")),
    (DUAL, {"ipFamilyPolicy": "PreferDualStack"},
     (["IPv4", "IPv6"], ["IPv4", "IPv6"], "PreferDualStack")),
    (DUAL, {"ipFamilyPolicy": "RequireDualStack"},
     (["IPv4", "IPv6"], ["IPv4", "IPv6"], "RequireDualStack")),
    (DUAL, {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"]},
     (["IPv6", "IPv4"], ["IPv6", "IPv4"], "PreferDualStack")),
    (DUAL, {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]},
     (["IPv6", "IPv4"], ["IPv6", "IPv4"], "RequireDualStack")),
    (DUAL, {"ipFamilies": ["IPv6"]}, (["IPv6"], ["IPv6"], "SingleStack")),
    (DUAL, {"clusterIP": "fd00:96::7"}, (["IPv6"], ["IPv6"], "SingleStack")),
    (DUAL[:1], {"ipFamilyPolicy": "PreferDualStack"}, (["IPv4"], ["IPv4"], "PreferDualStack")),
    (DUAL[1:], {}, (["IPv6"], ["IPv6"], "SingleStack")),
])
async def test_families_and_addresses_by_policy(cidrs: tuple[str, ...], body: dict,
                                                shape: tuple) -> None:
    registry, watcher = await _registry(cidrs)
    try:
        service, _ = await registry.put_service(KEY, body)
        assert _shape(service) == shape
        assert all(ip in registry.cluster_ips.of(ip_family(ip)) for ip in service.cluster_ips)
        assert registry.service(KEY) == service
    finally:
        await watcher.close()


@pytest.mark.parametrize(("cidrs", "body", "status", "field"), [
    (DUAL[:1], {"ipFamilyPolicy": "RequireDualStack"}, 400, "ipFamilyPolicy"),
    (DUAL[:1], {"ipFamilies": ["IPv6"]}, 400, "ipFamilies"),
    (DUAL[:1], {"clusterIP": "fd00:96::1"}, 400, "ipFamilies"),
    (DUAL, {"ipFamilies": ["IPv4", "IPv6"]}, 400, "ipFamilyPolicy"),
    (DUAL, {"clusterIPs": ["10.96.0.1", "fd00:96::1"]}, 400, "ipFamilyPolicy"),
    (DUAL, {"ipFamilyPolicy": "PreferDualStack", "clusterIPs": ["10.96.0.1", "10.96.0.2"]},
     400, "clusterIPs"),
    (DUAL, {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"],
            "clusterIPs": ["10.96.0.1"]}, 400, "clusterIPs"),
    (DUAL, {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.2"]}, 400, "clusterIP"),
    (DUAL, {"ipFamilies": ["IPv4", "IPv4"], "ipFamilyPolicy": "PreferDualStack"}, 400,
     "ipFamilies"),
    (DUAL, {"ipFamilies": "IPv4"}, 400, "ipFamilies"),
    (DUAL, {"ipFamilyPolicy": "Dual"}, 400, "ipFamilyPolicy"),
    (DUAL, {"ipFamilyPolicy": "PreferDualStack", "clusterIPs": ["10.96.0.1", "fd00:97::1"]},
     409, "clusterIPs[1]"),
    (DUAL, {"type": "Headless", "ipFamilyPolicy": "PreferDualStack"}, 400, "ipFamilyPolicy"),
])
async def test_stacks_that_cannot_be_are_refused_and_nothing_is_stored(
        cidrs: tuple[str, ...], body: dict, status: int, field: str) -> None:
    registry, watcher = await _registry(cidrs)
    try:
        with pytest.raises(SdnsError) as raised:
            await registry.put_service(KEY, body)
        assert (raised.value.status, raised.value.field) == (status, field)
        assert registry.services() == []
    finally:
        await watcher.close()


async def test_an_update_keeps_its_addresses_and_a_downgrade_frees_the_other_family() -> None:
    registry, watcher = await _registry(DUAL)
    other = ServiceKey("default", "other")
    try:
        dual, _ = await registry.put_service(KEY, {"ipFamilyPolicy": "PreferDualStack"})
        v4, v6 = dual.cluster_ips
        single, created = await registry.put_service(KEY, {"ports": []})
        assert not created
        assert single.cluster_ips == (v4,)
        taken, _ = await registry.put_service(other, {"clusterIP": v6})  # v6 is free again
        assert taken.cluster_ips == (v6,)
        again, _ = await registry.put_service(KEY, {"ipFamilyPolicy": "PreferDualStack"})
        assert again.cluster_ips[0] == v4
        assert again.cluster_ips[1] not in (v6, None)
        with pytest.raises(SdnsError) as raised:
            await registry.put_service(ServiceKey("default", "third"), {
                "ipFamilyPolicy": "PreferDualStack", "clusterIPs": ["10.96.9.9", v6]})
        assert (raised.value.status, raised.value.field) == (409, "clusterIP")
        await registry.delete_service(KEY)
        assert not {v4, *again.cluster_ips} & registry.watcher.view.cluster_ips()
    finally:
        await watcher.close()
