"""The stored form of services and endpoints: compact JSON with the fields of the HTTP API.

Every backend writes and reads values through here. orjson, because a replica that starts
decodes every stored value (500,000 for 100,000 services with 3 endpoints each), and the
standard library's json took about five times as long for it.
"""

from __future__ import annotations

from typing import Any

import orjson

from sdns.model import Endpoint, Event, Service


def dump(value: Service | Endpoint) -> bytes:
    return orjson.dumps(value.to_json(stored=True) if isinstance(value, Endpoint)
                        else value.to_json())


def load_service(data: bytes) -> Service:
    return Service.from_json(orjson.loads(data))


def load_endpoint(data: bytes) -> Endpoint:
    return Endpoint.from_json(orjson.loads(data))


def dump_events(events: list[Event]) -> bytes:
    return orjson.dumps([event.to_json(stored=True) for event in events])


def load_events(data: bytes) -> list[Event]:
    items: list[dict[str, Any]] = orjson.loads(data)
    return [Event.from_json(item) for item in items]
