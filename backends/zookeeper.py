"""ZooKeeper backend (kazoo). Znodes under the prefix (default /sdns):

    <prefix>/revision                                 its data version is the current revision
    <prefix>/log/<revision, 20 digits>                the events of that revision, JSON
    <prefix>/services/<namespace>/<name>              service JSON
    <prefix>/endpoints/<namespace>/<name>/<id>        endpoint JSON, with its expiresAt
    <prefix>/clusterips/<ip>                          "<namespace>/<name>" holding the address
    <prefix>/reaper                                   election of the replica that expires TTLs

Every write is one ZooKeeper transaction that bumps the revision, changes the data and appends
the log entry, so followers read one ordered stream with revisions, as from etcd.

    <prefix>/leases/<id>                              {"ttl", "expiresAt"} of a lease
    <prefix>/leases/<id>/<namespace>.<name>.<id>      an endpoint it holds (labels have no dots)

ZooKeeper has no TTL that kazoo can use, so leases are znodes. A renewal is one set of the
lease's data with its version, outside the log: no follower sees it. One replica, elected,
reads each lease when it is due and, if it is still past its deadline, deletes it and the
endpoints it holds in one transaction, one revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import selectors
import threading
import time
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import orjson
from kazoo.client import KazooClient
from kazoo.exceptions import (
    EXCEPTIONS,
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    UnimplementedError,
)
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.handlers.utils import selector_select
from kazoo.protocol.serialization import (
    CheckVersion,
    Create,
    Delete,
    GetChildren,
    GetData,
    MultiHeader,
    SetData,
    int_struct,
    multiheader_struct,
    read_buffer,
    read_string,
    stat_struct,
    write_string,
)
from kazoo.protocol.states import KazooState, ZnodeStat
from kazoo.security import OPEN_ACL_UNSAFE

from backends import stored
from backends.linger import Linger
from sdns.config import Config
from sdns.errors import BackendUnavailable, Invalid, NotFound, SdnsError
from sdns.model import Endpoint, Event, Lease, Service, ServiceKey
from sdns.store import ClusterIPTaken, Compacted, LeaseNotFound, ServiceExists, Snapshot
from sdns.tasks import cancel, settle

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
WRITE_ATTEMPTS = 50
HISTORY = 10_000  # log entries kept for followers that resume
REAP_INTERVAL = 0.2
LEASE_SCAN_INTERVAL = 1.0  # how often the reaper lists the leases, to learn new ones
# ZooKeeper refuses a request larger than jute.maxbuffer (1 MiB by default) and drops the
# connection that sent it: a transaction stays below, with room for the request's header.
MAX_TRANSACTION = 1_000_000
MAX_BATCH = 64  # writes in one group commit
# Endpoints one revision removes when a lease ends or a service goes: a thousand of the longest
# names take about 800 kB, within a transaction. Past that the removal takes several revisions.
REMOVALS = 1_000
READ_AHEAD = 64  # log entries a follower reads at once
READS = 128  # reads in one multiRead
REMEMBERED_LEASES = 100_000  # leases whose last write here is kept for one-step renewals
POLL_INTERVAL = 1.0  # a follower re-reads the log this often even without a watch firing


Plan = Callable[[int], Awaitable[tuple[list["_Op"], list[Event]]]]

_POLL = types.SimpleNamespace(DefaultSelector=selectors.PollSelector,
                              EVENT_READ=selectors.EVENT_READ, EVENT_WRITE=selectors.EVENT_WRITE)


class _Handler(SequentialThreadingHandler):
    """kazoo's threading handler, but its connection thread waits with a poll object: the
    default makes, registers and closes an epoll selector for each wait, once per request and
    reply. Alternated four times each on a real ZooKeeper (wrk, 32 connections), the medians
    went from 920 to 1,054 registrations/s and from 2,320 to 2,750 heartbeats/s."""

    def select(self, *args: Any, **kwargs: Any) -> Any:
        return selector_select(*args, selectors_module=_POLL, **kwargs)


class _Reads(NamedTuple):
    """ZooKeeper's multiRead (3.6 on), which kazoo lacks: several reads in one request, each a
    get, answered (data, stat), or a list of children, answered as the names; None for each
    znode that is missing (or the error ZooKeeper gave). Its wire form is that of a multi
    (kazoo's ``Transaction``) of reads."""

    ops: tuple[tuple[int, str], ...]  # (GetData.type or GetChildren.type, path)
    type = 22

    def serialize(self) -> bytes:
        request = bytearray()
        for op, path in self.ops:
            request += multiheader_struct.pack(op, False, -1) + write_string(path)
            request += b"\x00"  # no watch
        return bytes(request + multiheader_struct.pack(-1, True, -1))

    @classmethod
    def deserialize(cls, reply: bytes, offset: int) -> list[Any]:
        found: list[Any] = []
        header, offset = MultiHeader.deserialize(reply, offset)
        while not header.done:
            if header.type == GetData.type:
                data, offset = read_buffer(reply, offset)
                found.append((data, ZnodeStat._make(stat_struct.unpack_from(reply, offset))))
                offset += stat_struct.size
            elif header.type == GetChildren.type:
                count = int_struct.unpack_from(reply, offset)[0]
                offset += int_struct.size
                names = []
                for _ in range(max(count, 0)):
                    name, offset = read_string(reply, offset)
                    names.append(name)
                found.append(names)
            else:  # an error, with its code
                code = int_struct.unpack_from(reply, offset)[0]
                offset += int_struct.size
                found.append(None if code == NoNodeError.code else EXCEPTIONS[code]())
            header, offset = MultiHeader.deserialize(reply, offset)
        return found


@dataclass(slots=True)
class _Waiting:
    """A write waiting for its group commit."""

    plan: Plan
    done: asyncio.Future[int]


@dataclass(slots=True)
class _Renewal:
    """A versioned set of a lease's data waiting for the next multi of them."""

    lease: Lease  # as it will be written
    version: int  # of the lease znode it replaces
    done: asyncio.Future[int]  # the version written


@dataclass(frozen=True, slots=True)
class _Op:
    """One operation of a write transaction; ``conflict`` is raised when it fails, and None
    means the data moved under us: read again and retry."""

    method: str
    args: tuple[Any, ...]
    conflict: SdnsError | None = None


class ZooKeeperBackend:
    def __init__(self, hosts: list[str], prefix: str) -> None:
        self.hosts = hosts
        self.expired = 0  # endpoints this replica's reaper removed
        # Reconnect at least every second, so a ZooKeeper that comes back is used at once.
        retry = {"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0}
        self.zk = KazooClient(hosts=",".join(hosts), timeout=REQUEST_TIMEOUT,
                              connection_retry=retry, handler=_Handler())
        self._root = prefix.rstrip("/")
        self._revision_path = self._root + "/revision"
        self._waiting: list[_Waiting] = []
        self._committed: dict[int, bytes] = {}  # log entries written here, by revision
        self._version: int | None = None  # of the revision znode after this replica's commit
        self._renewed: dict[str, tuple[Lease, int]] = {}  # lease id -> (as written, version)
        self._committing: asyncio.Task[None] | None = None
        self._renewals: list[_Renewal] = []
        self._renewing: asyncio.Task[None] | None = None
        self._linger = Linger(self._renew)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._made: set[str] = set()
        self._soon: list[tuple[tuple[int, str], asyncio.Future[Any]]] = []  # this loop turn's
        self._reads: set[asyncio.Task[None]] = set()
        self._log_written = asyncio.Event()
        # The leases the reaper knows, and when each is due as last read: it reads a lease
        # again when due, since a renewal through another replica tells nobody.
        self._leases: set[str] = set()
        self._due: list[tuple[float, str]] = []
        self._leading = threading.Event()
        self._stopping = threading.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_config(cls, config: Config) -> ZooKeeperBackend:
        return cls(list(config.zk_hosts), config.prefix)

    # The bridge: kazoo works on its own threads; everything crosses into asyncio here.

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run the kazoo ``<method>_async`` call and await its result."""
        return await self._bridge(lambda: getattr(self.zk, method + "_async")(*args, **kwargs))

    async def _bridge(self, start: Callable[[], Any]) -> Any:
        """Await the kazoo IAsyncResult that ``start()`` returns; its callback runs on a kazoo
        thread and hands the outcome to this loop. Connection trouble is BackendUnavailable;
        ZooKeeper's answers about nodes (NoNode, NodeExists, ...) are raised as they are."""
        if not self.zk.connected:  # kazoo would queue the request until the timeout
            raise BackendUnavailable(f"zookeeper: not connected ({self.zk.state})")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def hand_over(result: Any) -> None:
            try:
                value = result.get_nowait()
            except Exception as error:  # handed to the awaiting coroutine as is
                loop.call_soon_threadsafe(settle, future, None, error)
            else:
                loop.call_soon_threadsafe(settle, future, value, None)

        try:
            start().rawlink(hand_over)
            return await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError,
                UnimplementedError):
            raise
        except (KazooException, KazooTimeoutError, TimeoutError) as error:
            raise BackendUnavailable(f"zookeeper: {type(error).__name__} {error}") from None

    def _notify(self, *_: Any) -> None:
        """A watch fired or the connection changed (on a kazoo thread): wake the followers."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._log_written.set)

    # Life cycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self.zk.start, REQUEST_TIMEOUT)
        except KazooTimeoutError:
            raise BackendUnavailable(f"zookeeper: cannot connect to {','.join(self.hosts)}"
                                     ) from None
        self.zk.add_listener(self._notify)
        for path in ("revision", "log", "services", "endpoints", "clusterips", "leases",
                     "reaper"):
            await asyncio.to_thread(self.zk.ensure_path, f"{self._root}/{path}")
        try:
            await self._read(((GetData.type, self._revision_path),))
        except UnimplementedError:
            raise BackendUnavailable("zookeeper: sdns needs ZooKeeper 3.6 or later, which "
                                     "reads several znodes in one request (multiRead)") from None
        threading.Thread(target=self._elect, name="sdns-reaper-election", daemon=True).start()
        self._tasks.append(asyncio.create_task(self._reap(), name="zookeeper-reaper"))

    async def close(self) -> None:
        self._stopping.set()
        self._linger.cancel()
        for task in [*self._tasks, self._committing, self._renewing, *self._reads]:
            if task is not None:
                await cancel(task)
        for renewal in self._renewals:  # lingering, never sent
            settle(renewal.done, 0, BackendUnavailable("zookeeper: closing"))
        await asyncio.to_thread(self.zk.stop)
        self.zk.close()

    async def ready(self) -> None:
        await self._call("exists", self._revision_path)

    # Paths

    def _service_path(self, key: ServiceKey) -> str:
        return f"{self._root}/services/{key.namespace}/{key.name}"

    def _endpoints_path(self, key: ServiceKey) -> str:
        return f"{self._root}/endpoints/{key.namespace}/{key.name}"

    def _log_path(self, revision: int) -> str:
        return f"{self._root}/log/{revision:020d}"

    def _ip_path(self, ip: str) -> str:
        return f"{self._root}/clusterips/{ip}"

    def _lease_path(self, lease_id: str) -> str:
        return f"{self._root}/leases/{lease_id}"

    def _holder_path(self, lease_id: str, key: ServiceKey, endpoint_id: str) -> str:
        """The index entry saying that lease holds the endpoint (labels have no dots)."""
        return f"{self._lease_path(lease_id)}/{key.namespace}.{key.name}.{endpoint_id}"

    async def _endpoint(self, path: str) -> tuple[Endpoint, Any] | None:
        found = await self._get(path)
        return None if found is None else (stored.load_endpoint(found[0]), found[1])

    async def _get(self, path: str) -> tuple[bytes, Any] | None:
        """(data, stat) of ``path``, None when there is none."""
        return await self._read_soon(GetData.type, path)

    async def _children(self, path: str) -> list[str]:
        return await self._read_soon(GetChildren.type, path) or []

    async def _read_soon(self, op: int, path: str) -> Any:
        """What ``_Reads`` answers for one read. The reads asked for in one turn of the loop
        (a group commit's plans, a snapshot's levels) go out together, READS to a multiRead:
        each had been a request through kazoo's thread of its own."""
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._soon:
            asyncio.get_running_loop().call_soon(self._read_batches)
        self._soon.append(((op, path), answered))
        return await answered

    def _read_batches(self) -> None:
        soon, self._soon = self._soon, []
        task = asyncio.create_task(self._answer(soon))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _answer(self, reads: list[tuple[tuple[int, str], asyncio.Future[Any]]]) -> None:
        try:
            found = await self._read_all([op for op, _ in reads])
        except Exception as error:  # handed to each read that waits for it
            for _, answered in reads:
                settle(answered, None, error)
            return
        for (_, answered), one in zip(reads, found, strict=True):
            settle(answered, one)

    async def _ensure(self, path: str) -> None:
        if path not in self._made:
            await asyncio.to_thread(self.zk.ensure_path, path)
            self._made.add(path)

    # Reads

    async def _revision(self) -> int:
        _, stat = await self._call("get", self._revision_path)
        return stat.version

    async def snapshot(self) -> Snapshot:
        # Events after the revision read first are replayed by the watch; they carry whole
        # values, so replaying one the snapshot already reflects converges to the same state.
        snapshot = Snapshot(await self._revision())
        services = await self._read_tree(f"{self._root}/services", 2)
        endpoints = await self._read_tree(f"{self._root}/endpoints", 3)
        snapshot.services.extend(stored.load_service(data) for _, data in services)
        for (namespace, name, _), data in endpoints:
            endpoint = stored.load_endpoint(data)
            key = ServiceKey(namespace, name)
            snapshot.endpoints.setdefault(key, []).append(endpoint)
        return snapshot

    async def _read_tree(self, root: str, depth: int) -> list[tuple[tuple[str, ...], bytes]]:
        """(path parts, data) of every znode ``depth`` levels below ``root``."""
        level: list[tuple[str, ...]] = [()]
        for _ in range(depth):
            lists = await self._read_all([(GetChildren.type, "/".join((root, *p)))
                                          for p in level])
            level = [(*p, child) for p, children in zip(level, lists, strict=True)
                     for child in children or ()]
        found = await self._read_all([(GetData.type, "/".join((root, *p))) for p in level])
        return [(p, got[0]) for p, got in zip(level, found, strict=True) if got is not None]

    async def _read_all(self, ops: list[tuple[int, str]]) -> list[Any]:
        """``_read`` of every one of ``ops``, READS to a request, all sent at once: a task per
        chunk, where a read each (a task per znode under ``gather``) held 300,000 tasks at
        once for a snapshot of 100,000 services."""
        chunks = await asyncio.gather(*(self._read(tuple(ops[start:start + READS]))
                                        for start in range(0, len(ops), READS)))
        return [one for chunk in chunks for one in chunk]

    async def watch(self, since: int) -> AsyncIterator[Event]:
        following = since
        ahead = 1  # entries read at once: doubles while they are all there (group commits
        # write many revisions at once, and one read per revision made followers lag)
        while True:
            self._log_written.clear()
            while (own := self._committed.pop(following, None)) is not None:
                for event in stored.load_events(own):
                    yield event
                following += 1
            entries = await self._read_log(following, ahead)
            for entry in entries:
                if entry is None:
                    break
                for event in stored.load_events(entry):
                    yield event
                following += 1
            if entries[-1] is not None:
                ahead = min(ahead * 2, READ_AHEAD)
                continue
            ahead = 1
            if entries[0] is not None:
                continue  # read up to what was there: look once more before waiting
            if await self._revision() >= following:
                # The entry is written with the revision bump, so it exists unless trimmed.
                if await self._call("exists", self._log_path(following)) is None:
                    raise Compacted(f"revision {following} is no longer in the log")
                continue
            if await self._call("exists", self._log_path(following), watch=self._notify):
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._log_written.wait(), POLL_INTERVAL)

    async def _read_log(self, first: int, count: int) -> list[bytes | None]:
        """Log entries ``first`` to ``first + count - 1``, None for each not written."""
        found = await self._read(tuple((GetData.type, self._log_path(first + i))
                                       for i in range(count)))
        return [None if one is None else one[0] for one in found]

    async def _read(self, ops: tuple[tuple[int, str], ...]) -> list[Any]:
        """What ``_Reads`` answers for ``ops``, in one request: a follower read each log entry
        with a get of its own, and that cost a second replica about 450 us of CPU per change
        it followed."""

        def start() -> Any:
            result = self.zk.handler.async_result()
            self.zk._call(_Reads(ops), result)  # as kazoo's get_async queues a get
            return result

        found: list[Any] = await self._bridge(start)
        for (_, path), one in zip(ops, found, strict=True):
            if isinstance(one, Exception):  # not a missing znode: ZooKeeper refused the read
                raise BackendUnavailable(f"zookeeper: {type(one).__name__} reading {path}")
        return found

    async def get_service(self, key: ServiceKey) -> Service | None:
        found = await self._get(self._service_path(key))
        return None if found is None else stored.load_service(found[0])

    async def get_endpoint(self, key: ServiceKey, endpoint_id: str) -> Endpoint | None:
        found = await self._endpoint(f"{self._endpoints_path(key)}/{endpoint_id}")
        return None if found is None else found[0]

    # Writes

    async def _write(self, plan: Plan) -> int:
        """Run ``plan`` (reads, then the operations and events of revision N) as one
        transaction with the revision bump and the log entry. Writes that arrive while a
        transaction is in flight wait, and go together in the next (group commit)."""
        waiting = _Waiting(plan, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_waiting(),
                                                   name="zookeeper-commit")
        return await waiting.done

    async def _commit_waiting(self) -> None:
        await _in_batches(self._waiting, self._commit_batch)

    async def _commit_batch(self, batch: list[_Waiting]) -> None:
        batch = [w for w in batch if not w.done.done()]
        while len(batch) > 1 and (together := await self._commit_together(batch)):
            batch = batch[together:]
        for waiting in batch:  # one at a time: each gets its own outcome
            try:
                settle(waiting.done, await self._commit_alone(waiting.plan))
            except Exception as error:  # handed to the writer that waits for it
                settle(waiting.done, 0, error)

    async def _commit_together(self, batch: list[_Waiting]) -> int:
        """As many writes from the front of the batch as one multi holds, each with its own
        revision and log entry; how many. 0 when they cannot go together (a plan refuses,
        the data moved, the first is too large alone), and nothing is written then."""
        for fresh in (False, True):
            # this replica's last commit usually tells the revision; when another replica
            # wrote since, the check fails, and it is read once
            base = self._version
            if base is None or fresh:
                _, stat = await self._call("get", self._revision_path)
                base = stat.version
            committed = await self._commit_batch_at(base, batch)
            if committed is not None:
                return committed
        return 0

    async def _commit_batch_at(self, base: int, batch: list[_Waiting]) -> int | None:
        """``_commit_together`` at revision ``base``; None when the revision moved."""
        planned = await asyncio.gather(*(w.plan(base + 1 + i) for i, w in enumerate(batch)),
                                       return_exceptions=True)
        if any(isinstance(p, BaseException) for p in planned):
            return 0
        transaction = self.zk.transaction()
        transaction.check(self._revision_path, base)
        size = _END + _size(transaction.operations)
        entries: list[bytes] = []
        for i, (ops, events) in enumerate(planned):  # type: ignore[misc]
            start = len(transaction.operations)
            entry = self._add(transaction, base + i, ops, events)
            size += _size(transaction.operations[start:])
            if size > MAX_TRANSACTION:
                del transaction.operations[start:]  # this write and those after: later
                break
            entries.append(entry)
        if not entries:
            return 0
        failed = _failed_at(await self._bridge(transaction.commit_async))
        if failed == 0:  # the revision check
            self._version = None
            return None
        if failed is not None:
            return 0
        self._version = base + len(entries)
        for i, (waiting, entry) in enumerate(zip(batch, entries, strict=False)):
            self._keep(base + 1 + i, entry)
            settle(waiting.done, base + 1 + i)
        return len(entries)

    async def _commit_alone(self, plan: Plan) -> int:
        """``plan`` as a transaction of its own, read again and retried while the data moves;
        the conflict of an operation that fails is raised."""
        for _ in range(WRITE_ATTEMPTS):
            _, stat = await self._call("get", self._revision_path)
            revision = stat.version + 1
            ops, events = await plan(revision)
            transaction = self.zk.transaction()
            transaction.check(self._revision_path, stat.version)
            entry = self._add(transaction, stat.version, ops, events)
            if (size := _END + _size(transaction.operations)) > MAX_TRANSACTION:
                raise Invalid(f"a change of {size} bytes is more than one ZooKeeper "
                              f"transaction takes (jute.maxbuffer, 1 MiB by default)",
                              "endpoints")
            failed = _failed_at(await self._bridge(transaction.commit_async))
            if failed is None:
                self._version = revision
                self._keep(revision, entry)
                return revision
            if 2 <= failed < 2 + len(ops) and ops[failed - 2].conflict is not None:
                raise ops[failed - 2].conflict
        raise BackendUnavailable("zookeeper: too much contention; try again")

    def _keep(self, revision: int, entry: bytes) -> None:
        """Hand the log entry this replica just committed to its own follower, which then need
        not read it back (what made a write wait for its follower most of its time)."""
        if len(self._committed) >= HISTORY:  # no follower takes them: keep the newest
            self._committed.pop(next(iter(self._committed)))
        self._committed[revision] = entry
        self._log_written.set()

    def _add(self, transaction: Any, version: int, ops: list[_Op], events: list[Event]
             ) -> bytes:
        """Add one revision to ``transaction``: bump the revision znode from ``version``, the
        operations, and the log entry of revision ``version + 1``; that entry."""
        transaction.set_data(self._revision_path, b"", version)
        for op in ops:
            getattr(transaction, op.method)(*op.args)
        entry = stored.dump_events(events)
        transaction.create(self._log_path(version + 1), entry)
        return entry

    async def put_service(self, service: Service, *, create: bool = False) -> int:
        key = service.key
        path = self._service_path(key)
        endpoints = self._endpoints_path(key)
        await self._ensure(path.rpartition("/")[0])
        await self._ensure(endpoints.rpartition("/")[0])
        owner = str(key).encode()
        body = stored.dump(service)

        async def plan(revision: int) -> tuple[list[_Op], list[Event]]:
            current = await self._get(path)
            if current is not None and create:
                raise ServiceExists(key)
            ops = [_Op("create", (path, body), ServiceExists(key) if create else None)
                   if current is None else _Op("set_data", (path, body, current[1].version))]
            if current is None and await self._call("exists", endpoints) is None:
                ops.append(_Op("create", (endpoints, b"")))  # where its endpoints will go
            for ip in service.cluster_ips:
                claim = await self._get(self._ip_path(ip))
                if claim is None:
                    ops.append(_Op("create", (self._ip_path(ip), owner), ClusterIPTaken(ip)))
                elif claim[0] != owner:
                    raise ClusterIPTaken(ip)
            old_ips = () if current is None else stored.load_service(current[0]).cluster_ips
            for ip in set(old_ips) - set(service.cluster_ips):
                ops.append(_Op("delete", (self._ip_path(ip),)))
            return ops, [Event(revision, "put", key, None, service)]

        return await self._write(plan)

    async def delete_service(self, key: ServiceKey) -> int:
        """The service and its endpoints, in one revision (REMOVALS endpoints a revision
        before the service's own past that)."""
        path = self._service_path(key)
        last = False

        async def plan(revision: int) -> tuple[list[_Op], list[Event]]:
            nonlocal last
            current = await self._get(path)
            if current is None:
                raise NotFound(f"service {key} not found")
            endpoint_ids = await self._children(self._endpoints_path(key))
            last = len(endpoint_ids) <= REMOVALS
            endpoint_ids = endpoint_ids[:REMOVALS]
            ops = [_Op("delete", (f"{self._endpoints_path(key)}/{i}",)) for i in endpoint_ids]
            held = await asyncio.gather(*(self._endpoint(f"{self._endpoints_path(key)}/{i}")
                                          for i in endpoint_ids))
            ops += [_Op("delete", (self._holder_path(found[0].lease, key, found[0].id),))
                    for found in held if found is not None and found[0].lease is not None]
            events = [Event(revision, "delete", key, i) for i in endpoint_ids]
            if last:
                ops.append(_Op("delete", (path, current[1].version)))
                events.append(Event(revision, "delete", key))
                for ip in stored.load_service(current[0]).cluster_ips:
                    ops.append(_Op("delete", (self._ip_path(ip),)))
            return ops, events

        while True:
            revision = await self._write(plan)
            if last:
                return revision

    async def put_endpoint(self, key: ServiceKey, endpoint: Endpoint) -> int:
        path = f"{self._endpoints_path(key)}/{endpoint.id}"
        body = stored.dump(endpoint)
        lease = endpoint.lease

        async def plan(revision: int) -> tuple[list[_Op], list[Event]]:
            current = await self._endpoint(path)
            ops = [_Op("check", (self._service_path(key), -1),
                       NotFound(f"service {key} not found"))]
            if lease is not None:
                ops.append(_Op("check", (self._lease_path(lease), -1), LeaseNotFound(lease)))
            ops += self._put_ops(key, endpoint, body, current)
            return ops, [Event(revision, "put", key, endpoint.id, endpoint)]

        return await self._write(plan)

    async def put_endpoints(self, key: ServiceKey, endpoints: list[Endpoint]) -> int:
        folder = self._endpoints_path(key)
        if not endpoints and not await self._children(folder):
            # nothing to change: a log entry without events would be a revision that no
            # watcher ever sees
            revision = await self._revision()
            if await self._call("exists", self._service_path(key)) is None:
                raise NotFound(f"service {key} not found")
            return revision
        bodies = {e.id: stored.dump(e) for e in endpoints}

        async def plan(revision: int) -> tuple[list[_Op], list[Event]]:
            ids = await self._children(folder)
            found = await asyncio.gather(*(self._endpoint(f"{folder}/{i}") for i in ids))
            current = {i: f for i, f in zip(ids, found, strict=True) if f is not None}
            ops = [_Op("check", (self._service_path(key), -1),
                       NotFound(f"service {key} not found"))]
            ops += [_Op("check", (self._lease_path(lease), -1), LeaseNotFound(lease))
                    for lease in sorted({e.lease for e in endpoints if e.lease})]
            events = []
            for endpoint_id, (old, stat) in current.items():
                if endpoint_id not in bodies:
                    ops.append(_Op("delete", (f"{folder}/{endpoint_id}", stat.version)))
                    if old.lease is not None:
                        ops.append(_Op("delete", (self._holder_path(old.lease, key,
                                                                    endpoint_id),)))
                    events.append(Event(revision, "delete", key, endpoint_id))
            for endpoint in endpoints:
                ops += self._put_ops(key, endpoint, bodies[endpoint.id],
                                     current.get(endpoint.id))
                events.append(Event(revision, "put", key, endpoint.id, endpoint))
            return ops, events

        return await self._write(plan)

    def _put_ops(self, key: ServiceKey, endpoint: Endpoint, body: bytes,
                 current: tuple[Endpoint, Any] | None) -> list[_Op]:
        """The operations that store ``endpoint`` over ``current`` (what is stored now, with
        its stat), moving its entry in the holder index when its lease changes."""
        path = f"{self._endpoints_path(key)}/{endpoint.id}"
        ops = [_Op("create", (path, body)) if current is None
               else _Op("set_data", (path, body, current[1].version))]
        before = None if current is None else current[0].lease
        if before != endpoint.lease:
            if before is not None:
                ops.append(_Op("delete", (self._holder_path(before, key, endpoint.id),)))
            if endpoint.lease is not None:
                ops.append(_Op("create", (self._holder_path(endpoint.lease, key, endpoint.id),
                                          b""), LeaseNotFound(endpoint.lease)))
        return ops

    async def delete_endpoint(self, key: ServiceKey, endpoint_id: str) -> int:
        path = f"{self._endpoints_path(key)}/{endpoint_id}"

        async def plan(revision: int) -> tuple[list[_Op], list[Event]]:
            current = await self._endpoint(path)
            if current is None:
                raise NotFound(f"endpoint {endpoint_id} of service {key} not found")
            ops = [_Op("delete", (path, current[1].version))]
            if current[0].lease is not None:
                ops.append(_Op("delete", (self._holder_path(current[0].lease, key,
                                                            endpoint_id),)))
            return ops, [Event(revision, "delete", key, endpoint_id)]

        return await self._write(plan)

    # Replicas: an ephemeral znode each, gone with the replica's session; announcing again
    # makes it anew after a session expired.

    async def announce(self, replica: str, ttl: int) -> None:
        path = f"{self._root}/replicas/{replica}"
        if await self._call("exists", path) is None:
            await self._ensure(f"{self._root}/replicas")
            with contextlib.suppress(NodeExistsError):
                await self._call("create", path, b"", ephemeral=True)

    async def replicas(self) -> list[str]:
        return sorted(await self._children(f"{self._root}/replicas"))

    # Leases: a znode whose data holds ttl and expiresAt, and one child per endpoint it holds.
    # A renewal is one set of that data, outside the log, so no follower sees it.

    async def create_lease(self, ttl: int) -> Lease:
        lease = Lease(uuid.uuid4().hex[:16], ttl, time.time() + ttl)
        await self._call("create", self._lease_path(lease.id), _lease_data(lease))
        self._know(lease.id, lease.expires_at)
        self._remember(lease, 0)
        return lease

    def _remember(self, lease: Lease, version: int) -> None:
        """What this replica last wrote of a lease, so that its next renewal here can be one
        versioned set instead of a read and a set."""
        if len(self._renewed) >= REMEMBERED_LEASES:
            self._renewed.pop(next(iter(self._renewed)))
        self._renewed[lease.id] = (lease, version)

    async def _read_lease(self, lease_id: str) -> tuple[Lease, Any] | None:
        found = await self._get(self._lease_path(lease_id))
        if found is None:
            return None
        data = orjson.loads(found[0])
        return Lease(lease_id, data["ttl"], data["expiresAt"]), found[1]

    async def renew_lease(self, lease_id: str) -> Lease:
        known = self._renewed.get(lease_id)
        if known is not None and known[0].expires_at > time.time():
            # not past the deadline this replica set: if nobody wrote the lease since (the
            # version says), it is still alive, and one set renews it
            renewed = replace(known[0], expires_at=time.time() + known[0].ttl)
            try:
                version = await self._set_lease(renewed, known[1])
            except BadVersionError:
                pass  # renewed through another replica: read it
            except NoNodeError:
                self._renewed.pop(lease_id, None)
                raise NotFound(f"lease {lease_id} not found (expired?)") from None
            else:
                self._remember(renewed, version)
                return renewed
        for _ in range(WRITE_ATTEMPTS):
            found = await self._read_lease(lease_id)
            if found is None or found[0].expires_at <= time.time():
                # past its deadline, the reaper is about to remove it
                raise NotFound(f"lease {lease_id} not found (expired?)")
            renewed = replace(found[0], expires_at=time.time() + found[0].ttl)
            try:
                version = await self._set_lease(renewed, found[1].version)
            except BadVersionError:
                continue  # renewed or reaped meanwhile: read again
            except NoNodeError:
                break
            self._remember(renewed, version)
            return renewed
        self._renewed.pop(lease_id, None)
        raise NotFound(f"lease {lease_id} not found (expired?)")

    async def _set_lease(self, lease: Lease, version: int) -> int:
        """Write ``lease``'s data over ``version`` and return the new version, or raise what
        the set alone would (BadVersionError, NoNodeError). Sets that arrive while one is in
        flight go together in the next multi: through kazoo, a multi of 32 sets cost 22 us of
        CPU per set, one set alone 231 us. When none is in flight, a set lingers for company
        (backends/linger.py)."""
        renewal = _Renewal(lease, version, asyncio.get_running_loop().create_future())
        self._renewals.append(renewal)
        if self._renewing is not None and not self._renewing.done():
            self._linger.overlapped()  # it goes in the next multi
        else:
            self._linger.came(len(self._renewals))
        return await renewal.done

    def _renew(self) -> None:
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renew_waiting(), name="zookeeper-renew")

    async def _renew_waiting(self) -> None:
        await _in_batches(self._renewals, self._renew_batch)

    async def _renew_batch(self, batch: list[_Renewal]) -> None:
        if len(batch) > 1:
            transaction = self.zk.transaction()
            for renewal in batch:
                transaction.set_data(self._lease_path(renewal.lease.id),
                                     _lease_data(renewal.lease), renewal.version)
            results = await self._bridge(transaction.commit_async)
            if _failed_at(results) is None:
                for renewal, stat in zip(batch, results, strict=True):
                    settle(renewal.done, stat.version)
                return
        # alone, or one set failed the multi (a lease renewed elsewhere, or gone) and nothing
        # was written: each on its own, for its own outcome
        outcomes = await asyncio.gather(
            *(self._call("set", self._lease_path(r.lease.id), _lease_data(r.lease), r.version)
              for r in batch), return_exceptions=True)
        for renewal, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                settle(renewal.done, 0, outcome)
            else:
                settle(renewal.done, outcome.version)

    async def get_lease(self, lease_id: str) -> Lease | None:
        found, holders = await asyncio.gather(self._read_lease(lease_id),
                                              self._children(self._lease_path(lease_id)))
        if found is None or found[0].expires_at <= time.time():
            return None
        return replace(found[0], endpoints=len(holders))

    async def delete_lease(self, lease_id: str) -> int:
        return await self._end_lease(lease_id, due=False)

    async def _end_lease(self, lease_id: str, due: bool) -> int:
        """Delete the lease and every endpoint it holds, in one revision (REMOVALS endpoints
        a revision past that); with ``due``, only when it is past its deadline (``NotFound``
        otherwise, and when it is gone)."""
        path = self._lease_path(lease_id)
        emptied = await self._end_empty_lease(lease_id, due)
        if emptied is not None:
            return emptied
        ended, last = 0, False

        async def plan(revision: int) -> tuple[list[_Op], list[Event]]:
            nonlocal ended, last
            found = await self._read_lease(lease_id)
            if found is None:
                raise NotFound(f"lease {lease_id} not found")
            if due and found[0].expires_at > time.time():
                raise NotFound("renewed")
            ops, events = [], []
            holders = await self._children(path)
            for holder in holders[:REMOVALS]:
                namespace, name, endpoint_id = holder.split(".")
                key = ServiceKey(namespace, name)
                ops += [_Op("delete", (f"{self._endpoints_path(key)}/{endpoint_id}",)),
                        _Op("delete", (f"{path}/{holder}",))]
                events.append(Event(revision, "delete", key, endpoint_id, expired=due))
            last = len(holders) <= REMOVALS
            if last:
                ops.append(_Op("delete", (path, found[1].version)))
            ended = len(events)
            return ops, events

        while True:
            revision = await self._write(plan)
            if due:
                self.expired += ended
            if last:
                return revision

    async def _end_empty_lease(self, lease_id: str, due: bool) -> int | None:
        """End a lease that holds no endpoint with a plain delete, since nothing anyone
        watches changes (a log entry without events would be a revision no watcher sees);
        the revision it happened at, or None when it holds endpoints."""
        path = self._lease_path(lease_id)
        found = await self._read_lease(lease_id)
        if found is None or (due and found[0].expires_at > time.time()):
            raise NotFound(f"lease {lease_id} not found" if found is None else "renewed")
        if await self._children(path):
            return None
        try:
            await self._call("delete", path, found[1].version)
        except NotEmptyError:
            return None  # an endpoint joined it meanwhile: the full path deletes both
        except (NoNodeError, BadVersionError):
            raise NotFound(f"lease {lease_id} not found (or renewed meanwhile)") from None
        self._renewed.pop(lease_id, None)
        return await self._revision()

    def _elect(self) -> None:
        """On its own thread: stand in the election until this process stops."""
        while not self._stopping.is_set():
            try:
                self.zk.Election(f"{self._root}/reaper", uuid.uuid4().hex).run(self._lead)
            except KazooException as error:
                log.info("reaper election interrupted: %s", error)
                self._stopping.wait(1.0)

    def _lead(self) -> None:
        self._leading.set()
        log.info("this replica now expires endpoint TTLs")
        try:
            while not self._stopping.is_set() and self.zk.state == KazooState.CONNECTED:
                self._stopping.wait(0.5)
        finally:
            self._leading.clear()

    async def _reap(self) -> None:
        trimmed = 0
        scanned = 0.0
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            if not self._leading.is_set():
                self._leases.clear()  # a leader learns them all again
                self._due.clear()
                continue
            try:
                if time.monotonic() - scanned >= LEASE_SCAN_INTERVAL:
                    scanned = time.monotonic()
                    await self._learn_leases()
                await self._expire_due()
                trimmed = await self._trim_log(trimmed)
            except (BackendUnavailable, NoNodeError) as error:
                log.debug("reaper: %s", error)
            except Exception:  # one lease that cannot end must not stop every expiry
                log.exception("reaper: expiring failed; trying again")

    def _know(self, lease_id: str, due: float) -> None:
        if self._leading.is_set():
            self._leases.add(lease_id)
            heapq.heappush(self._due, (due, lease_id))

    async def _learn_leases(self) -> None:
        """Learn the leases other replicas made, and forget those gone."""
        present = set(await self._children(f"{self._root}/leases"))
        self._leases &= present
        new = sorted(present - self._leases)
        for lease_id, found in zip(new, await asyncio.gather(
                *(self._read_lease(i) for i in new)), strict=True):
            if found is not None:
                self._know(lease_id, found[0].expires_at)

    async def _expire_due(self) -> None:
        """End the leases past their deadline; one renewed since it was last read is due
        again at its new deadline."""
        now = time.time()
        while self._due and self._due[0][0] <= now:
            _, lease_id = heapq.heappop(self._due)
            if lease_id not in self._leases:
                continue
            found = await self._read_lease(lease_id)
            if found is None:
                self._leases.discard(lease_id)
            elif found[0].expires_at > now:
                heapq.heappush(self._due, (found[0].expires_at, lease_id))
            else:
                with contextlib.suppress(NotFound):
                    await self._end_lease(lease_id, due=True)
                self._leases.discard(lease_id)

    async def _trim_log(self, trimmed: int) -> int:
        """Delete log entries older than the last ``HISTORY``; returns the new low mark."""
        keep_from = await self._revision() - HISTORY
        if trimmed == 0 and keep_from > 0:
            names = await self._children(f"{self._root}/log")
            trimmed = min((int(n) for n in names), default=keep_from)
        while trimmed < keep_from:
            with contextlib.suppress(NoNodeError):
                await self._call("delete", self._log_path(trimmed))
            trimmed += 1
        return trimmed


async def _in_batches(pending: list[Any], run: Callable[[list[Any]], Awaitable[None]]
                      ) -> None:
    """Take ``pending`` (writes or renewals, each with a ``done`` future; more may come
    meanwhile) in batches of MAX_BATCH until it is empty, and ``run`` each batch, which settles
    them. If ZooKeeper is out of reach, the batch hears it; if this is cancelled, every one
    still waiting hears that the store is closing."""
    while pending:
        batch = pending[:MAX_BATCH]
        del pending[:MAX_BATCH]
        try:
            await run(batch)
        except Exception as error:
            for waiting in batch:
                settle(waiting.done, 0, error)
        except BaseException:
            for waiting in (*batch, *pending):
                settle(waiting.done, 0, BackendUnavailable("zookeeper: closing"))
            pending.clear()
            raise


def _framing() -> dict[type, int]:
    """What a multi request holds of each kind of operation besides its path and data, as
    kazoo writes it: the operation's header, the lengths, a create's ACL and flags, a version."""
    header = len(MultiHeader(-1, False, -1).serialize())
    empty = [Create("", b"", OPEN_ACL_UNSAFE, 0), SetData("", b"", -1), Delete("", -1),
             CheckVersion("", -1)]
    return {type(op): header + len(op.serialize()) for op in empty}


_FRAMING = _framing()


def _size(operations: list[Any]) -> int:
    """The bytes ``operations`` (kazoo's requests) take in a multi request, counted without
    writing them, which costs about 4 us an operation; the request adds _END."""
    return sum(_FRAMING[type(op)] + len(op.path.encode()) + len(getattr(op, "data", b""))
               for op in operations)


_END = multiheader_struct.size  # the header that ends a multi request


def _failed_at(results: list[Any]) -> int | None:
    """The operation that failed a transaction: ZooKeeper reports those before it as rolled
    back, and those after as inconsistent, all exceptions too."""
    return next((i for i, r in enumerate(results)
                 if isinstance(r, Exception) and not isinstance(r, RolledBackError)), None)


def _lease_data(lease: Lease) -> bytes:
    return orjson.dumps({"ttl": lease.ttl, "expiresAt": lease.expires_at})
