"""The watcher: one ordered stream of backend events applied to the local view
(``sdns.view``), then told to subscribers (the DNS answer cache, the balancer) and to watch
streams."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

from sdns.errors import BackendUnavailable, Gone
from sdns.model import Event, ServiceKey
from sdns.preservation import Preservation
from sdns.store import Backend, Compacted, Snapshot
from sdns.tasks import cancel
from sdns.view import Change, View, differences

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    def changed(self, change: Change) -> None: ...

    def reloaded(self) -> None:
        """The whole view was replaced; forget everything derived from it."""
        ...


@contextlib.contextmanager
def _bulk_load() -> Iterator[None]:
    """Reading a whole store makes millions of objects that live on. The cycle collector
    would scan them again and again as they arrive (a third of a start from 100,000 services),
    so it pauses; afterwards they are moved out of its reach (``gc.freeze``). The model holds
    no cycles, so reference counting still frees what a later change drops."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


# Events kept for watch streams that resume, and how far one stream may fall behind.
HISTORY = 10_000
STREAM_BACKLOG = 10_000


class Watcher:
    """Follows the backend from a snapshot on, keeping ``view`` current, and hands the same
    events to watch streams (``stream``)."""

    RETRY_SECONDS = 0.5

    AGE_SECONDS = 5.0  # how often preserved endpoints past their age are dropped

    def __init__(self, backend: Backend, preservation: Preservation | None = None) -> None:
        self.backend = backend
        self.preservation = preservation
        self._aging: asyncio.Task[None] | None = None
        self.view = View()
        self.healthy = False
        self._subscribers: list[Subscriber] = []
        self._history: deque[Event] = deque(maxlen=HISTORY)
        self._history_floor = 0  # every event after this revision is in _history
        self._streams: set[asyncio.Queue[Event | None]] = set()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tiebreak = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def start(self) -> None:
        with _bulk_load():
            self._load(await self.backend.snapshot())
        self._task = asyncio.create_task(self._follow(), name="watcher")
        if self.preservation is not None:
            self._aging = asyncio.create_task(self._age(), name="preservation-age")

    def end_streams(self) -> None:
        """End every watch stream, so that readers go (at shutdown)."""
        for queue in self._streams:
            _end(queue)

    async def close(self) -> None:
        for task in (self._task, self._aging):
            if task is not None:
                await cancel(task)

    async def caught_up(self, revision: int, timeout: float) -> bool:
        """Wait until the view reflects ``revision``; False when that took too long."""
        if self.view.revision >= revision:
            return True
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, next(self._tiebreak), future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    def stream(self, since: int | None = None) -> AsyncIterator[Event]:
        """Every event after ``since - 1`` (from now on when None), in order. Raises ``Gone``
        at once when that history is no longer kept; the stream ends when this watcher had to
        reload or the reader fell too far behind, and the reader resumes from its last
        revision."""
        if since is None:
            since = self.view.revision + 1
        if self._history_floor > 0 and since <= self._history_floor:
            raise Gone(f"events before revision {self._history_floor + 1} are no longer kept; "
                       "list the services again and watch from their revision", "since")
        queue: asyncio.Queue[Event | None] = asyncio.Queue(STREAM_BACKLOG)
        for event in self._history:
            if event.revision >= since:
                queue.put_nowait(event)
        self._streams.add(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[Event | None]) -> AsyncIterator[Event]:
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._streams.discard(queue)

    async def _follow(self) -> None:
        while True:
            try:
                await self._follow_once()
            except Compacted:
                log.warning("watch history was compacted; reloading from the backend")
                await self._reload()
            except BackendUnavailable as error:
                if self.healthy:
                    log.warning("lost the backend (%s); serving the last known data and "
                                "retrying", error.reason)
                self.healthy = False
                await asyncio.sleep(self.RETRY_SECONDS)

    async def _follow_once(self) -> None:
        events = self.backend.watch(self.view.revision + 1)
        if not self.healthy:
            await self.backend.ready()
            log.info("following the backend from revision %d", self.view.revision + 1)
            self.healthy = True
        async for event in events:
            self._apply(event)

    async def _reload(self) -> None:
        """After compaction: read the whole store again, and hand on the difference as events,
        so subscribers and watch streams see what changed meanwhile, once."""
        try:
            with _bulk_load():
                snapshot = await self.backend.snapshot()
        except BackendUnavailable as error:
            log.warning("reload failed (%s); retrying", error.reason)
            await asyncio.sleep(self.RETRY_SECONDS)
            return
        events = differences(self.view, snapshot)
        log.info("reloaded at revision %d: %d changes since revision %d", snapshot.revision,
                 len(events), self.view.revision)
        for event in events:
            self._apply(event)
        self.view.revision = snapshot.revision
        self.healthy = True
        self._wake()

    def _load(self, snapshot: Snapshot) -> None:
        with self.view.lock:
            self.view.load(snapshot)
            for subscriber in self._subscribers:
                subscriber.reloaded()
        self.healthy = True
        self._history_floor = snapshot.revision
        self._wake()

    def is_preserved(self, key: ServiceKey, endpoint_id: str) -> bool:
        return self.preservation is not None and (key, endpoint_id) in \
            self.preservation.preserved

    async def _age(self) -> None:
        assert self.preservation is not None
        while True:
            await asyncio.sleep(self.AGE_SECONDS)
            for event in self.preservation.aged(self.view):
                self._apply_one(event)

    def _apply(self, event: Event) -> None:
        """Apply a change from the store, unless self-preservation keeps what it deletes."""
        if self.preservation is None:
            self._apply_one(event)
            return
        applied = self.preservation.admit(event, self.view)
        for each in applied:
            self._apply_one(each)
        if event not in applied:  # kept: the view is at its revision all the same
            self.view.revision = max(self.view.revision, event.revision)
            self._wake()

    def _apply_one(self, event: Event) -> None:
        with self.view.lock:
            change = self.view.apply(event)
            for subscriber in self._subscribers:
                subscriber.changed(change)
        if len(self._history) == self._history.maxlen:
            self._history_floor = self._history[0].revision
        self._history.append(event)
        for queue in list(self._streams):
            if queue.full():
                _end(queue)
            else:
                queue.put_nowait(event)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.view.revision:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)


def _end(queue: asyncio.Queue[Event | None]) -> None:
    """End the stream reading ``queue`` now. What it had not delivered is dropped: the reader
    resumes from the last revision it saw."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)
