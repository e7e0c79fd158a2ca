from __future__ import annotations

from sdns.model import Endpoint, Service, ServiceKey
from sdns.store import Snapshot
from sdns.view import View, differences

WEB, DB, NEW = ServiceKey("d", "web"), ServiceKey("d", "db"), ServiceKey("d", "new")


def _view() -> View:
    view = View()
    view.load(Snapshot(5, [Service("d", "web", cluster_ips=("10.0.0.1",)),
                           Service("d", "db", cluster_ips=("10.0.0.2",))],
                       {WEB: [Endpoint("a", "10.1.0.1", "a"), Endpoint("b", "10.1.0.2", "b")],
                        DB: [Endpoint("x", "10.1.0.9", "x")]}))
    return view


def test_differences_take_the_view_to_the_snapshot() -> None:
    view = _view()
    snapshot = Snapshot(9, [Service("d", "web", cluster_ips=("10.0.0.1",)),
                            Service("d", "new", cluster_ips=("10.0.0.3",))],
                        {WEB: [Endpoint("a", "10.1.0.1", "a"), Endpoint("b", "10.1.0.7", "b"),
                               Endpoint("c", "10.1.0.3", "c")],
                         NEW: [Endpoint("n", "10.1.0.4", "n")]})
    events = differences(view, snapshot)
    steps = [(e.action, e.key.name, e.endpoint_id) for e in events]
    assert steps == [
        ("delete", "db", "x"), ("delete", "db", None),
        ("put", "web", "b"), ("put", "web", "c"),
        ("put", "new", None), ("put", "new", "n"),
    ]
    assert {e.revision for e in events} == {9}
    for event in events:
        view.apply(event)
    assert [s.key for s in view.services()] == [WEB, NEW]
    assert [e.ip for e in view.endpoints(WEB)] == ["10.1.0.1", "10.1.0.7", "10.1.0.3"]


def test_no_differences_no_events() -> None:
    view = _view()
    same = Snapshot(7, list(view.services()), {WEB: view.endpoints(WEB), DB: view.endpoints(DB)})
    assert differences(view, same) == []
