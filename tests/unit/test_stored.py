"""The stored form of services and endpoints, as every backend writes and reads it."""

from __future__ import annotations

import orjson

from backends import stored
from sdns.model import (
    Endpoint,
    Event,
    IPFamily,
    IPFamilyPolicy,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
    SessionAffinity,
)

WEB = Service("default", "web", ports=(ServicePort("http", 80, target_port=8080), ServicePort(
    "dns", 53, Protocol.UDP, 5353)), cluster_ips=("10.96.0.10",),
    session_affinity=SessionAffinity.CLIENT_IP, affinity_timeout=60)


def test_a_service_comes_back_equal() -> None:
    for service in (WEB, Service("default", "db", ServiceType.HEADLESS),
                    Service("default", "ext", ServiceType.EXTERNAL_NAME,
                            external_name="example.org")):
        assert stored.load_service(stored.dump(service)) == service


def test_an_endpoint_comes_back_equal() -> None:
    endpoint = Endpoint("e1", "10.244.0.5", "web-0", (("dns", 5353), ("http", 8080)),
                        ready=False, ttl=30, expires_at=1_800_000_000.5)
    assert stored.load_endpoint(stored.dump(endpoint)) == endpoint


def test_events_come_back_equal() -> None:
    events = [Event(7, "put", WEB.key, None, WEB),
              Event(7, "put", WEB.key, "e1", Endpoint("e1", "10.244.0.5", "e1")),
              Event(8, "delete", ServiceKey("default", "old"), "e2")]
    assert stored.load_events(stored.dump_events(events)) == events


def test_the_stored_form_is_the_api_json() -> None:
    assert orjson.loads(stored.dump(WEB)) == WEB.to_json()


def test_decoded_values_share_their_port_lists() -> None:
    # 100,000 services with one port list and 3 endpoints each hold one copy of it, not 100,000
    first, second = (stored.load_service(stored.dump(WEB)) for _ in range(2))
    assert first.ports is second.ports
    a, b = (stored.load_endpoint(stored.dump(Endpoint(f"e{i}", f"10.0.0.{i}", f"e{i}",
                                                      (("http", 8080),)))) for i in range(2))
    assert a.ports is b.ports
    assert a.hostname is a.id


def test_dual_stack_comes_back_equal_and_single_stack_values_stored_before_still_load() -> None:
    dual = Service("default", "dual", cluster_ips=("10.96.0.11", "fd00:96::b"),
                   ip_family_policy=IPFamilyPolicy.PREFER_DUAL_STACK)
    assert dual.ip_families == (IPFamily.IPV4, IPFamily.IPV6)
    assert stored.load_service(stored.dump(dual)) == dual
    before = orjson.dumps({"namespace": "default", "name": "web", "type": "ClusterIP",
                           "ports": [], "clusterIP": "10.96.0.10", "externalName": None,
                           "sessionAffinity": "None", "sessionAffinityTimeout": 10800})
    loaded = stored.load_service(before)
    assert (loaded.cluster_ips, loaded.ip_families, loaded.ip_family_policy) == (
        ("10.96.0.10",), (IPFamily.IPV4,), IPFamilyPolicy.SINGLE_STACK)
