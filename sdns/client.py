"""A client of the sdns HTTP API: typed methods for every call, the watch stream as an async
iterator that resumes and relists by itself, and lease renewal in the background; ``Sync`` is
the same for scripts that do not run an event loop.

    async with Client("http://127.0.0.1:8053", token=...) as sdns:
        await sdns.register("shop", "cart", "cart-1", {"ip": "10.244.1.5"})
        async for event in sdns.watch():
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from sdns.tasks import cancel

T = TypeVar("T")
DEFAULT_SERVER = "http://127.0.0.1:8053"
TIMEOUT = aiohttp.ClientTimeout(total=30)
RECONNECT_SECONDS = 1.0


class ApiError(Exception):
    """The server answered with an error: its status and ``{"error", "field"}``."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {"error": str(body)}
        field = self.body.get("field")
        super().__init__(f"{status}: {self.body.get('error')}" + (f" ({field})" if field else ""))


class Unreachable(Exception):
    """The server could not be reached."""


class Client:
    def __init__(self, server: str = DEFAULT_SERVER, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=TIMEOUT)
        # renewals and heartbeats on connections of their own, which sdns answers without its
        # web framework's work for each request (sdns/api/renewals.py)
        self._renewals = aiohttp.ClientSession(headers=headers, timeout=TIMEOUT)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()
        await self._renewals.close()

    async def _call(self, method: str, path: str, body: Any = None, renewal: bool = False
                    ) -> Any:
        session = self._renewals if renewal else self._session
        try:
            async with session.request(method, self.server + path, json=body) as reply:
                text = await reply.text()
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise Unreachable(f"cannot reach {self.server}: {error}") from None
        data = json.loads(text) if text else None
        if reply.status >= 400:
            raise ApiError(reply.status, data)
        return data

    # Services

    async def services(self, namespace: str | None = None) -> dict[str, Any]:
        """``{"revision", "services"}``."""
        query = "" if namespace is None else f"?namespace={namespace}"
        result: dict[str, Any] = await self._call("GET", "/v1/services" + query)
        return result

    async def service(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/v1/services/{namespace}/{name}")
        return result

    async def put_service(self, namespace: str, name: str, service: dict[str, Any]
                          ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("PUT", f"/v1/services/{namespace}/{name}",
                                                  service)
        return result

    async def delete_service(self, namespace: str, name: str) -> None:
        await self._call("DELETE", f"/v1/services/{namespace}/{name}")

    # Endpoints

    async def endpoints(self, namespace: str, name: str) -> list[dict[str, Any]]:
        result = await self._call("GET", f"/v1/services/{namespace}/{name}/endpoints")
        return list(result["endpoints"])

    async def register(self, namespace: str, name: str, endpoint_id: str,
                       endpoint: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "PUT", f"/v1/services/{namespace}/{name}/endpoints/{endpoint_id}", endpoint)
        return result

    async def put_endpoints(self, namespace: str, name: str, endpoints: list[dict[str, Any]]
                            ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "PUT", f"/v1/services/{namespace}/{name}/endpoints", {"endpoints": endpoints})
        return result

    async def heartbeat(self, namespace: str, name: str, endpoint_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/services/{namespace}/{name}/endpoints/{endpoint_id}/heartbeat",
            renewal=True)
        return result

    async def deregister(self, namespace: str, name: str, endpoint_id: str) -> None:
        await self._call("DELETE", f"/v1/services/{namespace}/{name}/endpoints/{endpoint_id}")

    # Leases

    async def create_lease(self, ttl: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/v1/leases", {"ttl": ttl})
        return result

    async def lease(self, lease_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/v1/leases/{lease_id}")
        return result

    async def renew_lease(self, lease_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", f"/v1/leases/{lease_id}/renew",
                                                  renewal=True)
        return result

    async def delete_lease(self, lease_id: str) -> None:
        await self._call("DELETE", f"/v1/leases/{lease_id}")

    @contextlib.asynccontextmanager
    async def keep_renewed(self, lease_id: str, ttl: int,
                           on_error: Callable[[Exception], None] | None = None
                           ) -> AsyncIterator[None]:
        """Renew the lease at a third of its ttl while the block runs; an error (a 404 once it
        has expired, an outage) goes to ``on_error`` and renewal goes on."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(ttl / 3)
                try:
                    await self.renew_lease(lease_id)
                except (ApiError, Unreachable) as error:
                    if on_error is not None:
                        on_error(error)

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            await cancel(task)

    # Others

    async def balancer(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/v1/balancer")
        return result

    async def ready(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/readyz")
        return result

    async def watch(self, since: int | None = None, relist: bool = True
                    ) -> AsyncIterator[dict[str, Any]]:
        """Every change from ``since`` on (the next one without), as ``/v1/watch`` gives it.
        When the stream ends it resumes after the last event seen; when that is past the
        server's history (410) it lists again and yields ``{"action": "relist",
        "revision": N, "services": [...]}`` before the changes after it, or raises the 410
        when ``relist`` is False."""
        while True:
            query = "" if since is None else f"?since={since}"
            try:
                async with self._session.get(self.server + "/v1/watch" + query,
                                             timeout=aiohttp.ClientTimeout()) as reply:
                    if reply.status == 410 and relist:
                        listed = await self.services()
                        since = listed["revision"] + 1
                        yield {"action": "relist", **listed}
                        continue
                    if reply.status >= 400:
                        raise ApiError(reply.status, await reply.json(content_type=None))
                    async for line in reply.content:
                        if line.strip():
                            event = json.loads(line)
                            since = event["revision"] + 1
                            yield event
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                pass
            await asyncio.sleep(RECONNECT_SECONDS)


class Sync:
    """The client for scripts: each method runs the async one to completion."""

    def __init__(self, server: str = DEFAULT_SERVER, token: str | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = self._run(self._make(server, token))

    @staticmethod
    async def _make(server: str, token: str | None) -> Client:
        return Client(server, token)

    def _run(self, call: Awaitable[T]) -> T:
        return self._loop.run_until_complete(call)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        if name in ("watch", "keep_renewed") or not callable(method):
            raise AttributeError(f"{name} needs the async Client")
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.close()

    def __enter__(self) -> Sync:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
