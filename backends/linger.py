"""Renewals that wait a moment for company before they go to the store.

A lease renewal that reaches an idle store alone costs the store far more than its share of a
batch: etcd and ZooKeeper spend most of a lone request on waking their own threads. At 150
renewals a second, one at a time, etcd took 430-510 us of CPU per keepalive and ZooKeeper
520-880 us per set; three together cost 230-280 us and 220-380 us each, eight together
155-190 us and 100-370 us (docs/PERFORMANCE.md). So a renewal that finds nothing on its way
waits up to LINGER for others, and COMPANY of them leave at once. A renewal is still answered
only once the store has it; what it adds is at most LINGER to its answer.

A renewer that sends its next renewal only once the last is answered (an agent renewing its
leases one after another) would wait LINGER for each, for company that cannot come: 100
leases would take 2 s. So once a renewal has waited the whole LINGER alone, renewals leave at
once, until one comes while another is still unanswered: then renewers overlap, and company
can come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LINGER = 0.02  # seconds a renewal waits for others before it leaves alone
COMPANY = 8  # renewals waiting together that leave without waiting longer


class Linger:
    """Calls ``leave`` once COMPANY renewals wait, or LINGER after the first of them came
    (at once while renewals come one after another's answer)."""

    def __init__(self, leave: Callable[[], object]) -> None:
        self._leave = leave
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = 0
        self._alone = False  # the last renewal waited the whole LINGER for nothing

    def came(self, waiting: int) -> None:
        """One more renewal came; ``waiting`` of them wait now, counting it."""
        self._waiting = waiting
        if waiting >= COMPANY or self._alone:
            self.cancel()
            self._leave()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LINGER, self._go)

    def overlapped(self) -> None:
        """A renewal came while others sent before it had no answer yet."""
        self._alone = False

    def _go(self) -> None:
        self._timer = None
        self._alone = self._waiting == 1
        self._leave()

    def cancel(self) -> None:
        """Forget the renewals waiting: ``leave`` is not called for them."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
