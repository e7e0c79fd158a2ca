from __future__ import annotations

from sdns.model import Endpoint, Event, Service, ServiceKey
from sdns.view import View


def _key() -> ServiceKey:
    """Equal to every other, but an object of its own, as each write's path makes one."""
    return ServiceKey("d", "web")


def test_endpoints_written_one_by_one_share_their_service_key() -> None:
    view = View()
    service = Service("d", "web", cluster_ips=("10.0.0.1",))
    view.apply(Event(1, "put", _key(), None, service))
    for i in range(3):
        view.apply(Event(2 + i, "put", _key(), f"e{i}", Endpoint(f"e{i}", f"10.1.0.{i}", f"e{i}")))
    holders = [h for i in range(3) for h in view.holders(f"10.1.0.{i}")]
    assert [h[1] for h in holders] == ["e0", "e1", "e2"]
    assert all(h[0] is service.key for h in holders)
    assert view.holders("10.0.0.1") == {(service.key, None)}
