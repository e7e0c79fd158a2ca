"""etcd backend (aetcd). Keys under the prefix (default /sdns):

    <prefix>/services/<namespace>/<name>             service JSON
    <prefix>/endpoints/<namespace>/<name>/<id>       endpoint JSON, on a lease when it has a ttl
    <prefix>/clusterips/<ip>                         "<namespace>/<name>" holding the address

Revisions are etcd's; one watch on the prefix follows every change. A lease (and the lease of
its own that an endpoint with a ttl gets) is an etcd lease, so etcd itself expires the
endpoints it holds whatever happens to the replica that registered them; a renewal is one
keepalive (over the stream in backends/keepalives.py), which no watch sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, ParamSpec, TypeVar

import aetcd
import aetcd.exceptions
import grpc
from aetcd.transactions import Mod
from aetcd.utils import prefix_range_end

from backends import stored
from backends.keepalives import KeepAlives
from sdns.config import Config
from sdns.errors import BackendUnavailable, Invalid, NotFound
from sdns.model import Endpoint, Event, Lease, Service, ServiceKey
from sdns.store import ClusterIPTaken, Compacted, LeaseNotFound, ServiceExists, Snapshot
from sdns.tasks import cancel, settle

P = ParamSpec("P")
T = TypeVar("T")
# Attempts of a write whose compare failed because another writer changed the same keys.
WRITE_ATTEMPTS = 8
REQUEST_TIMEOUT = 5
# A snapshot reads the prefix in pages, each at most MAX_MESSAGE: etcd counts the rest of the
# range for every limited request, so small pages make a large snapshot quadratic.
SNAPSHOT_PAGE = 100_000
MAX_MESSAGE = 64 * 1024 * 1024
# Endpoint writes in one group commit: each is one put of etcd's 128 operations per
# transaction by default, with a compare per service beside.
MAX_BATCH = 60


def _unavailable(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """etcd client failures become ``BackendUnavailable``, which the API answers with 503."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except aetcd.exceptions.RevisionCompactedError as error:
            raise Compacted(str(error)) from None
        except (aetcd.exceptions.ClientError, TimeoutError) as error:
            raise BackendUnavailable(f"etcd: {type(error).__name__} {error}".strip()) from None

    return wrapper


@dataclass(slots=True)
class _Write:
    """An endpoint write waiting for its group commit."""

    service: bytes  # the service's key, which must exist
    path: bytes
    op: Any
    done: asyncio.Future[int | None] = field(init=False)


def channel_target(endpoints: list[str]) -> tuple[str, int]:
    """aetcd dials f"{host}:{port}"; split a gRPC ``ipv4:`` list of several members so."""
    host, _, port = ",".join(endpoints).rpartition(":")
    scheme = "ipv6:" if endpoints[0].startswith("[") else "ipv4:"
    return scheme + host, int(port)


class EtcdBackend:
    def __init__(self, endpoints: list[str], prefix: str) -> None:
        host, port = channel_target(endpoints)
        self.endpoints = endpoints
        self.expired = 0  # expiries this replica saw: etcd expires the leases itself
        self.client = aetcd.Client(host=host, port=port, timeout=REQUEST_TIMEOUT,
                                   options={"grpc.max_receive_message_length": MAX_MESSAGE})
        root = prefix.rstrip("/").encode()
        self._root = root + b"/"
        self._services = root + b"/services/"
        self._endpoints = root + b"/endpoints/"
        self._cluster_ips = root + b"/clusterips/"
        self._replicas = root + b"/replicas/"
        # Written with every change sdns makes, first in its revision ("!" sorts before the
        # other keys, as etcd orders a revoke's deletes): a revision of deletes without it is
        # etcd expiring a lease, which self-preservation must tell from a delete by a call.
        self._mark = root + b"/!mark"
        self._presence: str | None = None  # the lease this replica's key lives by
        self._tx = self.client.transactions
        self._waiting: list[_Write] = []
        self._committing: asyncio.Task[None] | None = None
        self._keepalives: KeepAlives | None = None  # the stream renewals share
        self._opening: asyncio.Task[KeepAlives] | None = None

    @classmethod
    def from_config(cls, config: Config) -> EtcdBackend:
        return cls(list(config.etcd_endpoints), config.prefix)

    @_unavailable
    async def start(self) -> None:
        await self.client.connect()

    async def close(self) -> None:
        for task in (self._committing, self._opening):
            if task is not None:
                await cancel(task)
        if self._keepalives is not None:
            self._keepalives.end("etcd: closing")
        if self._presence is not None:  # leave at once rather than when the lease runs out
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.leasestub.LeaseRevoke(
                    aetcd.rpc.LeaseRevokeRequest(ID=int(self._presence, 16)),
                    metadata=self.client.metadata), 1)
        await self.client.close()

    @_unavailable
    async def ready(self) -> None:
        await asyncio.wait_for(self.client.get(self._root + b"ready"), 2)

    # Keys

    def _service_key(self, key: ServiceKey) -> bytes:
        return self._services + f"{key.namespace}/{key.name}".encode()

    def _endpoints_of(self, key: ServiceKey) -> bytes:
        return self._endpoints + f"{key.namespace}/{key.name}/".encode()

    def _endpoint_key(self, key: ServiceKey, endpoint_id: str) -> bytes:
        return self._endpoints_of(key) + endpoint_id.encode()

    def _ip_key(self, ip: str) -> bytes:
        return self._cluster_ips + ip.encode()

    def _endpoint(self, kv: Any) -> Endpoint:
        endpoint = stored.load_endpoint(kv.value)
        if endpoint.ttl and endpoint.lease is None and kv.lease:
            # stored before endpoints named their own lease: it is the key's
            endpoint = replace(endpoint, lease=f"{kv.lease:x}")
        return endpoint

    def _event(self, revision: int, put: bool, path: bytes, kv: Any) -> Event | None:
        """The sdns event for a change to ``path``, or None for keys of no interest."""
        if path.startswith(self._services):
            namespace, name = path[len(self._services):].decode().split("/")
            service = stored.load_service(kv.value) if put else None
            return Event(revision, "put" if put else "delete", ServiceKey(namespace, name), None,
                         service)
        if path.startswith(self._endpoints):
            namespace, name, endpoint_id = path[len(self._endpoints):].decode().split("/")
            endpoint = self._endpoint(kv) if put else None
            return Event(revision, "put" if put else "delete", ServiceKey(namespace, name),
                         endpoint_id, endpoint)
        return None

    # Reads

    @_unavailable
    async def snapshot(self) -> Snapshot:
        """Every key under the prefix, read in pages at one revision (100,000 services with
        their endpoints are some 90 MB)."""
        end = prefix_range_end(self._root)
        page = await self._page(self._root, end, 0)
        snapshot = Snapshot(page.header.revision)
        self._add_page(snapshot, page.kvs)
        while page.more and page.kvs:
            page = await self._page(page.kvs[-1].key + b"\0", end, snapshot.revision)
            self._add_page(snapshot, page.kvs)
        return snapshot

    async def _page(self, start: bytes, end: bytes, revision: int) -> Any:
        request = aetcd.rpc.RangeRequest(key=start, range_end=end, limit=SNAPSHOT_PAGE,
                                         revision=revision)
        try:
            return await self.client.kvstub.Range(request, timeout=REQUEST_TIMEOUT,
                                                  metadata=self.client.metadata)
        except grpc.aio.AioRpcError as error:
            raise BackendUnavailable(f"etcd: {error.code().name} {error.details()}") from None

    def _add_page(self, snapshot: Snapshot, kvs: Any) -> None:
        """Decode one page into ``snapshot``. This is most of a start from a large store, so
        it skips the events and reuses the key of the previous endpoint (they come sorted)."""
        services, endpoints = self._services, self._endpoints
        folder: bytes | None = None
        found: list[Endpoint] = []
        for kv in kvs:
            path = kv.key
            if path.startswith(endpoints):
                endpoint = self._endpoint(kv)
                if folder is None or not path.startswith(folder):
                    folder = path[:path.rindex(b"/") + 1]
                    key = ServiceKey(*folder[len(endpoints):-1].decode().split("/"))
                    found = snapshot.endpoints.setdefault(key, [])
                found.append(endpoint)
            elif path.startswith(services):
                snapshot.services.append(stored.load_service(kv.value))

    async def watch(self, since: int) -> AsyncIterator[Event]:
        watch = await _unavailable(self.client.watch_prefix)(self._root, start_revision=since)
        marked = 0  # the last revision sdns wrote (see _mark)
        try:
            async for change in _unavailable_iter(watch):
                revision, put = change.kv.mod_revision, change.kind == "PUT"
                if change.kv.key.startswith(self._mark):
                    marked = revision
                    continue
                event = self._event(revision, put, change.kv.key, change.kv)
                if event is not None:
                    if not put and event.endpoint_id is not None and revision != marked:
                        event = replace(event, expired=True)
                        self.expired += 1
                    yield event
        finally:
            with contextlib.suppress(aetcd.exceptions.ClientError):  # the stream may be gone
                await watch.cancel()

    @_unavailable
    async def get_service(self, key: ServiceKey) -> Service | None:
        found = await self.client.get(self._service_key(key))
        return None if found is None else stored.load_service(found.value)

    @_unavailable
    async def get_endpoint(self, key: ServiceKey, endpoint_id: str) -> Endpoint | None:
        found = await self.client.get(self._endpoint_key(key, endpoint_id))
        return None if found is None else self._endpoint(found)

    # Writes

    async def _group_commit(self, write: _Write) -> int | None:
        """Commit ``write`` with the others waiting: while one transaction is in flight, the
        writes that arrive wait, and go together in the next (a batch leaves when the one
        before returns). The revision, or None when its service is gone."""
        write.done = asyncio.get_running_loop().create_future()
        self._waiting.append(write)
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_waiting(), name="etcd-commit")
        return await write.done

    async def _commit_waiting(self) -> None:
        while self._waiting:
            batch: list[_Write] = []
            paths: set[bytes] = set()
            later: list[_Write] = []
            for write in self._waiting:
                if write.done.done():
                    continue  # its caller went away
                # etcd refuses a transaction that changes one key twice
                if write.path in paths or len(batch) >= MAX_BATCH:
                    later.append(write)
                else:
                    batch.append(write)
                    paths.add(write.path)
            self._waiting = later
            try:
                await self._commit_batch(batch)
            except Exception as error:  # etcd out of reach: the batch's writers hear it
                for write in batch:
                    settle(write.done, None, error)
            except BaseException:  # closing: so does every writer still waiting
                for write in (*batch, *self._waiting):
                    settle(write.done, None, BackendUnavailable("etcd: closing"))
                self._waiting = []
                raise

    async def _commit_batch(self, batch: list[_Write]) -> None:
        if len(batch) > 1:
            try:
                revision = await self._commit(
                    [self._tx.version(s) > 0 for s in dict.fromkeys(w.service for w in batch)],
                    [w.op for w in batch])
            except aetcd.exceptions.ClientError:
                revision = None  # one write's fault (a lease gone): find whose, alone
            if revision is not None:
                for write in batch:
                    settle(write.done, revision, None)
                return
        for write in batch:  # one at a time: each gets its own outcome
            try:
                alone = await self._commit([self._tx.version(write.service) > 0], [write.op])
            except Exception as error:  # handed to the writer that waits for it
                settle(write.done, None, error)
            else:
                settle(write.done, alone, None)

    async def _commit(self, compare: list[Any], success: list[Any]) -> int | None:
        """The revision of the transaction, or None when a compare failed."""
        succeeded, responses = await self.client.transaction(
            compare=compare, success=[self._tx.put(self._mark, b""), *success], failure=[])
        if not succeeded:
            return None
        first = responses[0]
        return getattr(first, first.WhichOneof("response")).header.revision

    @_unavailable
    async def put_service(self, service: Service, *, create: bool = False) -> int:
        key = self._service_key(service.key)
        owner = str(service.key).encode()
        body = stored.dump(service)
        for _ in range(WRITE_ATTEMPTS):
            current = await self.client.get(key)
            if current is not None and create:
                raise ServiceExists(service.key)
            compare = [self._tx.mod(key) == (0 if current is None else current.mod_revision)]
            success = [self._tx.put(key, body)]
            for ip in service.cluster_ips:
                claim = await self.client.get(self._ip_key(ip))
                if claim is None:
                    compare.append(self._tx.version(self._ip_key(ip)) == 0)
                    success.append(self._tx.put(self._ip_key(ip), owner))
                elif claim.value != owner:
                    raise ClusterIPTaken(ip)
                else:
                    compare.append(self._tx.value(self._ip_key(ip)) == owner)
            old_ips = () if current is None else stored.load_service(current.value).cluster_ips
            for ip in set(old_ips) - set(service.cluster_ips):
                success.append(self._tx.delete(self._ip_key(ip)))
            revision = await self._commit(compare, success)
            if revision is not None:
                return revision
        raise BackendUnavailable("etcd: too much contention on " + key.decode())

    @_unavailable
    async def delete_service(self, key: ServiceKey) -> int:
        path = self._service_key(key)
        for _ in range(WRITE_ATTEMPTS):
            current = await self.client.get(path)
            if current is None:
                raise NotFound(f"service {key} not found")
            endpoints = self._endpoints_of(key)
            success = [
                self._tx.delete(endpoints, range_end=prefix_range_end(endpoints)),
                self._tx.delete(path),
            ]
            for ip in stored.load_service(current.value).cluster_ips:
                success.append(self._tx.delete(self._ip_key(ip)))
            revision = await self._commit([self._tx.mod(path) == current.mod_revision], success)
            if revision is not None:
                return revision
        raise BackendUnavailable("etcd: too much contention on " + path.decode())

    @_unavailable
    async def put_endpoint(self, key: ServiceKey, endpoint: Endpoint) -> int:
        lease = None if endpoint.lease is None else int(endpoint.lease, 16)
        path = self._endpoint_key(key, endpoint.id)
        try:
            revision = await self._group_commit(_Write(
                self._service_key(key), path,
                self._tx.put(path, stored.dump(endpoint), lease=lease)))
        except aetcd.exceptions.ClientError as error:
            if endpoint.lease is not None and "lease not found" in str(error):
                raise LeaseNotFound(endpoint.lease) from None
            raise
        if revision is None:
            raise NotFound(f"service {key} not found")
        return revision

    @_unavailable
    async def put_endpoints(self, key: ServiceKey, endpoints: list[Endpoint]) -> int:
        prefix = self._endpoints_of(key)
        end = prefix_range_end(prefix)
        for _ in range(WRITE_ATTEMPTS):
            page = await self._page(prefix, end, 0)
            wanted = {self._endpoint_key(key, e.id) for e in endpoints}
            success = [self._tx.delete(kv.key) for kv in page.kvs if kv.key not in wanted]
            success += [self._tx.put(self._endpoint_key(key, e.id), stored.dump(e),
                                     lease=None if e.lease is None else int(e.lease, 16))
                        for e in endpoints]
            # nothing under the prefix changed since it was read, and the service is there
            compare = [self._tx.version(self._service_key(key)) > 0,
                       Mod(prefix, range_end=end) < page.header.revision + 1]
            if not success:  # empty and staying so: nothing to write
                if await self.client.get(self._service_key(key)) is None:
                    raise NotFound(f"service {key} not found")
                return int(page.header.revision)
            try:
                revision = await self._commit(compare, success)
            except aetcd.exceptions.ClientError as error:
                if "lease not found" in str(error):
                    raise LeaseNotFound(next(e.lease for e in endpoints if e.lease)) from None
                if "too many operations" in str(error):
                    raise Invalid(f"etcd takes at most so many changes in one transaction "
                                  f"(its --max-txn-ops, 128 by default); this set needs "
                                  f"{len(success)}", "endpoints") from None
                raise
            if revision is not None:
                return revision
            if await self.client.get(self._service_key(key)) is None:
                raise NotFound(f"service {key} not found")
        raise BackendUnavailable("etcd: too much contention on " + prefix.decode())

    @_unavailable
    async def delete_endpoint(self, key: ServiceKey, endpoint_id: str) -> int:
        path = self._endpoint_key(key, endpoint_id)
        revision = await self._commit([self._tx.version(path) > 0], [self._tx.delete(path)])
        if revision is None:
            raise NotFound(f"endpoint {endpoint_id} of service {key} not found")
        return revision

    # Leases are etcd's own: etcd expires them, and deletes what they hold in one revision.

    @_unavailable
    async def create_lease(self, ttl: int) -> Lease:
        asked = time.time()  # etcd's deadline starts later, so this one is never after it
        granted = await self.client.lease(ttl)
        return Lease(f"{granted.id:x}", ttl, asked + ttl)

    @_unavailable
    async def renew_lease(self, lease_id: str) -> Lease:
        asked = time.time()
        ttl = await self._keep_alive(int(lease_id, 16))
        if ttl <= 0:
            raise NotFound(f"lease {lease_id} not found (expired?)")
        return Lease(lease_id, ttl, asked + ttl)

    async def _keep_alive(self, lease: int) -> int:
        """The TTL of one keepalive over the stream that every renewal shares (aetcd's
        refresh_lease opens a stream per call, which held heartbeats to about 2,000/s). A
        keepalive unanswered for REQUEST_TIMEOUT drops the stream; the next renewal opens
        another, trying the member after the last one first."""
        stream = self._keepalives
        if stream is None or stream.closed:
            if self._opening is None or self._opening.done():
                self._opening = asyncio.create_task(self._open_keepalives(stream),
                                                    name="etcd-keepalives")
            stream = await asyncio.shield(self._opening)
        try:
            return await asyncio.wait_for(stream.renew(lease), REQUEST_TIMEOUT)
        except TimeoutError:
            stream.end("etcd: a keepalive went unanswered")
            raise BackendUnavailable(f"etcd: no keepalive reply in {REQUEST_TIMEOUT} s"
                                     ) from None

    async def _open_keepalives(self, last: KeepAlives | None) -> KeepAlives:
        members = self.endpoints
        if last is not None and last.endpoint in members:
            after = members.index(last.endpoint) + 1
            members = members[after:] + members[:after]
        self._keepalives = await KeepAlives.open(members, REQUEST_TIMEOUT)
        return self._keepalives

    # Replicas: a key each, under a lease of its own that announcing again renews.

    @_unavailable
    async def announce(self, replica: str, ttl: int) -> None:
        if self._presence is not None:
            with contextlib.suppress(NotFound):
                await self.renew_lease(self._presence)
                return
        lease = await self.create_lease(ttl)
        await self.client.put(self._replicas + replica.encode(), b"",
                              lease=int(lease.id, 16))
        self._presence = lease.id

    @_unavailable
    async def replicas(self) -> list[str]:
        found = await self.client.get_prefix(self._replicas, keys_only=True)
        return sorted(kv.key[len(self._replicas):].decode() for kv in found)

    @_unavailable
    async def get_lease(self, lease_id: str) -> Lease | None:
        info = await self.client.get_lease_info(int(lease_id, 16), keys=True)
        if info.TTL <= 0:
            return None
        # TTL counts whole seconds left, rounded down: the deadline is no later than said
        return Lease(lease_id, info.grantedTTL, time.time() + info.TTL, len(info.keys))

    @_unavailable
    async def delete_lease(self, lease_id: str) -> int:
        lease = int(lease_id, 16)
        info = await self.client.get_lease_info(lease, keys=True)
        if info.TTL <= 0:
            raise NotFound(f"lease {lease_id} not found")
        if info.keys:  # a mark under the lease, deleted with its keys in the same revision
            try:
                await self.client.put(self._mark + b"/" + lease_id.encode(), b"", lease=lease)
            except aetcd.exceptions.ClientError:
                raise NotFound(f"lease {lease_id} not found") from None
        request = aetcd.rpc.LeaseRevokeRequest(ID=lease)
        try:
            revoked = await self.client.leasestub.LeaseRevoke(
                request, timeout=REQUEST_TIMEOUT, metadata=self.client.metadata)
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"lease {lease_id} not found") from None
            raise BackendUnavailable(f"etcd: {error.code().name} {error.details()}") from None
        # Without keys the revoke changes nothing anyone watches, and the revision it reports
        # is etcd's latest, maybe a key outside the prefix that this replica's watch never
        # sees: waiting for it answered 202 after 5 s.
        return revoked.header.revision if info.keys else 0


async def _unavailable_iter(watch: Any) -> AsyncIterator[Any]:
    iterator = watch.__aiter__()
    while True:
        try:
            change = await iterator.__anext__()
        except StopAsyncIteration:
            raise BackendUnavailable("etcd: the watch stream ended") from None
        except aetcd.exceptions.RevisionCompactedError as error:
            raise Compacted(str(error)) from None
        except aetcd.exceptions.ClientError as error:
            raise BackendUnavailable(f"etcd: {type(error).__name__} {error}") from None
        yield change
