"""Self-preservation, as Eureka does it: when leases stop being renewed all at once, that is a
partition between the agents and sdns, not a mass death, so the endpoints that expire are kept.

Within ``WINDOW`` seconds, when more than ``threshold`` of the lease-held endpoints expire (and
at least ``MIN_HELD`` are lease-held, so one agent's expiry is not a partition), the expiries
are not applied: those endpoints stay in DNS and the balancer, marked preserved, and so do the
ones that expired earlier in the window, which are put back. While any is preserved, every
expiry is preserved too. A preserved endpoint goes when its owner registers it again, when a
call deletes it, or after ``max_age`` seconds. One whose active check is critical is not kept.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from sdns.model import Endpoint, Event, HealthStatus, ServiceKey
from sdns.view import View

WINDOW = 60.0  # seconds
MIN_HELD = 10
log = logging.getLogger(__name__)

Key = tuple[ServiceKey, str]


@dataclass(frozen=True, slots=True)
class Settings:
    enabled: bool = True
    threshold: float = 0.15
    max_age: float = 900.0  # seconds


class Preservation:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.preserved: dict[Key, float] = {}  # what is kept, since when (monotonic)
        self._recent: deque[tuple[float, Key, Endpoint]] = deque()  # expired in the window

    @property
    def active(self) -> bool:
        return bool(self.preserved)

    def admit(self, event: Event, view: View) -> list[Event]:
        """The events to apply for ``event`` (which comes from the store): itself, nothing
        (an expiry kept), or the window's earlier expiries put back first."""
        if event.endpoint_id is None:
            if event.action == "delete":  # a service deleted takes its preserved endpoints
                for key in [k for k in self.preserved if k[0] == event.key]:
                    del self.preserved[key]
            return [event]
        key = (event.key, event.endpoint_id)
        if not event.expired:
            self.preserved.pop(key, None)  # registered again, or deleted by a call
            return [event]
        endpoint = view.endpoint(event.key, event.endpoint_id)
        if endpoint is None or not self.settings.enabled:
            return [event]
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - WINDOW:
            self._recent.popleft()
        restored: list[Event] = []
        tripped = not self.active and self._trips(view)
        if tripped:
            log.warning("%d of %d lease-held endpoints expired within %g s: a partition, not "
                        "a mass death; keeping them (self-preservation)", len(self._recent) + 1,
                        view.held + len(self._recent), WINDOW)
            for _, earlier, value in self._recent:
                if view.endpoint(*earlier) is None and view.service(earlier[0]) is not None \
                        and _keepable(value):
                    self.preserved[earlier] = now
                    restored.append(Event(event.revision, "put", earlier[0], earlier[1], value))
            self._recent.clear()
        if (self.active or tripped) and _keepable(endpoint):
            self.preserved[key] = now
            return restored
        self._recent.append((now, key, endpoint))
        return [*restored, event]

    def _trips(self, view: View) -> bool:
        expired = len(self._recent) + 1
        held = view.held + len(self._recent)  # those expired were held at the window's start
        return held >= MIN_HELD and expired > self.settings.threshold * held

    def aged(self, view: View) -> list[Event]:
        """Deletes of the endpoints kept longer than ``max_age``."""
        limit = time.monotonic() - self.settings.max_age
        gone = [key for key, since in self.preserved.items() if since <= limit]
        for key in gone:
            del self.preserved[key]
        if gone:
            log.info("%d preserved endpoints dropped after %g s", len(gone),
                     self.settings.max_age)
        return [Event(view.revision, "delete", key[0], key[1]) for key in gone
                if view.endpoint(*key) is not None]


def _keepable(endpoint: Endpoint) -> bool:
    return endpoint.health is None or endpoint.health.status is not HealthStatus.CRITICAL
