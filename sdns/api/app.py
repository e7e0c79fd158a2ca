"""Routes of the HTTP API over plain handlers: parse, call the registry, render JSON."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from sdns import metrics
from sdns.api.tokens import Token, TokenFile
from sdns.balancer.balancer import Balancer
from sdns.errors import (
    BackendUnavailable,
    Forbidden,
    Invalid,
    SdnsError,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from sdns.model import Lease, ServiceKey
from sdns.registry import Registry
from sdns.validation import label, lease_id, service_key

MAX_BODY = 64 * 1024
MAX_SET_BODY = 4 * 1024 * 1024  # a whole endpoint set: 10,000 endpoints
READY_TIMEOUT = 2.0
REGISTRY = web.AppKey("registry", Registry)
BALANCER = web.AppKey("balancer", Balancer)
TOKENS = web.AppKey("tokens", TokenFile)
OPEN_PATHS = web.AppKey("open_paths", frozenset)
TOKEN = "token"  # the request's Token, when the API has tokens
READ_METHODS = frozenset({"GET", "HEAD"})
ALWAYS_OPEN = frozenset({"/healthz", "/readyz", "/openapi.json", "/", "/ui"})
UI_PREFIX = "/ui/"  # the dashboard's files: the page asks for a token itself
OPENAPI = importlib.resources.files("sdns.api").joinpath("openapi.json")
UI = importlib.resources.files("sdns.api").joinpath("ui")
UI_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
            ".svg": "image/svg+xml"}
ABOUT = web.AppKey("about", dict)
CHALLENGE = 'Bearer realm="sdns"'  # the WWW-Authenticate of a 401

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as ``{"error": ..., "field": ...}`` with its status."""
    try:
        return await handler(request)
    except SdnsError as error:
        headers = {"WWW-Authenticate": CHALLENGE} if error.status == 401 else None
        return web.json_response(error.to_json(), status=error.status, headers=headers)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        allow = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return web.json_response({"error": error.reason.lower()}, status=error.status,
                                 headers=allow)


def presented(headers: Mapping[str, str]) -> str:
    scheme, _, secret = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return secret.strip()
    return headers.get("X-Sdns-Token", "")


def check_token(app: web.Application, method: str, path: str, namespace: str | None,
                presented: str) -> Token | None:
    """With tokens on, the token ``presented`` for a call, if its scope and namespaces cover
    it (else Unauthorized or Forbidden); None when tokens are off or the path is open."""
    token_file = app.get(TOKENS)
    if token_file is None or path in app[OPEN_PATHS] or path.startswith(UI_PREFIX):
        return None
    token = token_file.tokens.find(presented)
    if token is None:
        raise Unauthorized("missing or unknown token")
    if method not in READ_METHODS and not token.may_write():
        raise Forbidden(f"token {token.name!r} may only read")
    if namespace is not None and not token.covers(namespace):
        raise Forbidden(f"token {token.name!r} may not use namespace {namespace!r}", "namespace")
    return token


@web.middleware
async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every call but the open paths needs a token (``check_token``) when tokens are on; the
    handler sees it as ``request[TOKEN]`` to leave out other namespaces."""
    token = check_token(request.app, request.method, request.path,
                        request.match_info.get("namespace", request.query.get("namespace")),
                        presented(request.headers))
    if token is None:
        return await handler(request)
    if token.namespaces is not None and request.method == "DELETE" and \
            request.match_info.route.resource is not None and \
            request.match_info.route.resource.canonical == LEASE:
        raise Forbidden(f"token {token.name!r} may not delete leases: that removes their "
                        "endpoints in every namespace, and the token is limited to some")
    request[TOKEN] = token
    return await handler(request)


def _covers(request: web.Request, namespace: str) -> bool:
    """Whether the caller's token (if tokens are on) may see ``namespace``."""
    token: Token | None = request.get(TOKEN)
    return token is None or token.covers(namespace)


def _key(request: web.Request) -> ServiceKey:
    return service_key(request.match_info["namespace"], request.match_info["name"])


def _endpoint_id(request: web.Request) -> str:
    return label(request.match_info["id"], "id")


# A body is JSON. Also taken: no Content-Type, and the form type curl -d sends, so that
# `curl -X PUT ... -d '{...}'` works as the README shows; any other type is refused, since a
# browser page may send those cross-site without asking.
JSON_TYPES = frozenset({"application/json", "application/x-www-form-urlencoded"})


async def _body(request: web.Request, limit: int = MAX_BODY) -> Any:
    if request.headers.get("Content-Type") is not None and \
            request.content_type not in JSON_TYPES:
        raise UnsupportedMediaType(f"the body must be JSON (Content-Type: application/json), "
                                   f"not {request.content_type}", "Content-Type")
    raw = bytearray()
    while len(raw) <= limit and (chunk := await request.content.read(limit + 1 - len(raw))):
        raw += chunk
    if len(raw) > limit:
        if limit == MAX_BODY:
            raise Invalid(f"body is larger than {limit // 1024} KiB", "body")
        raise TooLarge(f"body is larger than {limit // (1024 * 1024)} MiB", "body")
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Invalid(f"body is not valid JSON: {error}", "body") from None


def _registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while the backend answers; DNS keeps serving the last known data either way."""
    registry = _registry(request)
    try:
        await asyncio.wait_for(registry.ready(), READY_TIMEOUT)
    except TimeoutError:
        raise BackendUnavailable(f"no answer within {READY_TIMEOUT:g} s") from None
    preserved = registry.preserving
    return web.json_response({"status": "ready", "revision": registry.revision,
                              "selfPreservation": preserved > 0, "preserved": preserved})


async def watch(request: web.Request) -> web.StreamResponse:
    """Changes as newline-delimited JSON events, from revision ``since`` on."""
    since_text = request.query.get("since")
    since = None
    if since_text is not None:
        if not since_text.isdigit():
            raise Invalid("since must be a revision number (0 or more)", "since")
        since = int(since_text)
    changes = _registry(request).changes(since)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    async with contextlib.aclosing(changes):
        try:
            async for event in changes:
                if not _covers(request, event.key.namespace):
                    continue
                await response.write(json.dumps(event.to_json()).encode() + b"\n")
        except ConnectionResetError:  # the client left, as watchers do: nothing to report
            return response
    await response.write_eof()
    return response


def _namespace_asked(request: web.Request) -> str | None:
    """The ``namespace`` query parameter that limits a list, checked."""
    namespace = request.query.get("namespace")
    return None if namespace is None else label(namespace, "namespace")


async def list_services(request: web.Request) -> web.Response:
    namespace = _namespace_asked(request)
    registry = _registry(request)
    return web.json_response({"revision": registry.revision,
                              "services": [s.to_json() for s in registry.services(namespace)
                                           if _covers(request, s.key.namespace)]})


async def list_all_endpoints(request: web.Request) -> web.Response:
    namespace = _namespace_asked(request)
    registry = _registry(request)
    return web.json_response({"revision": registry.revision, "endpoints": [
        {"namespace": key.namespace, "service": key.name, **endpoint.to_json()}
        for key, endpoint in registry.all_endpoints(namespace) if _covers(request, key.namespace)]})


async def status(request: web.Request) -> web.Response:
    """What this sdns is, how its store is doing, and the replicas the store knows (null while
    it does not answer)."""
    registry = _registry(request)
    try:
        replicas: list[str] | None = await asyncio.wait_for(registry.replicas(), READY_TIMEOUT)
    except (TimeoutError, BackendUnavailable):
        replicas = None
    return web.json_response({**request.app[ABOUT], "revision": registry.revision,
                              "store": "up" if registry.store_up else "outage",
                              "replicas": replicas})


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")


async def ui_page(request: web.Request) -> web.Response:
    """The dashboard, told whether the API needs a token (it asks for one before any call)."""
    page = UI.joinpath("index.html").read_text()
    auth = "token" if request.app.get(TOKENS) is not None else "open"
    return web.Response(text=page.replace("{{auth}}", auth), content_type="text/html",
                        headers={"Cache-Control": "no-cache"})


async def ui_file(request: web.Request) -> web.Response:
    return _ui_file(request.match_info["file"])


def _ui_file(name: str) -> web.Response:
    suffix = name[name.rfind("."):] if "." in name else ""
    path = UI.joinpath(name)
    if "/" in name or suffix not in UI_TYPES or not path.is_file():
        raise web.HTTPNotFound()
    return web.Response(body=path.read_bytes(), content_type=UI_TYPES[suffix],
                        headers={"Cache-Control": "no-cache"})


async def get_service(request: web.Request) -> web.Response:
    return web.json_response(_registry(request).service(_key(request)).to_json())


async def put_service(request: web.Request) -> web.Response:
    key = _key(request)
    service, created = await _registry(request).put_service(key, await _body(request))
    return web.json_response(service.to_json(), status=201 if created else 200)


async def delete_service(request: web.Request) -> web.Response:
    await _registry(request).delete_service(_key(request))
    return web.Response(status=204)


async def list_endpoints(request: web.Request) -> web.Response:
    key = _key(request)
    endpoints = await _registry(request).endpoints(key)
    preserved = _registry(request).preserved(key)
    return web.json_response({"endpoints": [
        e.to_json() | {"preserved": True} if e.id in preserved else e.to_json()
        for e in endpoints]})


async def put_endpoint(request: web.Request) -> web.Response:
    key, endpoint_id = _key(request), _endpoint_id(request)
    endpoint, created = await _registry(request).put_endpoint(key, endpoint_id,
                                                              await _body(request))
    return web.json_response(endpoint.to_json(), status=201 if created else 200)


async def put_endpoint_set(request: web.Request) -> web.Response:
    revision, endpoints, created = await _registry(request).put_endpoints(
        _key(request), await _body(request, MAX_SET_BODY))
    return web.json_response({"revision": revision, "endpoints": [e.to_json() for e in endpoints]},
                             status=201 if created else 200)


async def heartbeat(request: web.Request) -> web.Response:
    info = request.match_info
    return web.json_response(await heartbeaten(_registry(request), info["namespace"],
                                               info["name"], info["id"]))


async def heartbeaten(registry: Registry, namespace: str, name: str, endpoint_id: str
                      ) -> dict[str, Any]:
    """The endpoint whose lease a heartbeat renewed, as the API answers it."""
    endpoint = await registry.heartbeat(service_key(namespace, name), label(endpoint_id, "id"))
    return endpoint.to_json()


async def delete_endpoint(request: web.Request) -> web.Response:
    await _registry(request).delete_endpoint(_key(request), _endpoint_id(request))
    return web.Response(status=204)


def _lease_id(request: web.Request) -> str:
    return lease_id(request.match_info["id"], "id")


async def create_lease(request: web.Request) -> web.Response:
    lease = await _registry(request).create_lease(await _body(request))
    return web.json_response(_without_count(lease), status=201)


async def get_lease(request: web.Request) -> web.Response:
    return web.json_response((await _registry(request).lease(_lease_id(request))).to_json())


async def renew_lease(request: web.Request) -> web.Response:
    return web.json_response(await renewed(_registry(request), request.match_info["id"]))


async def renewed(registry: Registry, lease: str) -> dict[str, Any]:
    """The renewed lease, as the API answers it."""
    return _without_count(await registry.renew_lease(lease_id(lease, "id")))


async def delete_lease(request: web.Request) -> web.Response:
    await _registry(request).delete_lease(_lease_id(request))
    return web.Response(status=204)


def _without_count(lease: Lease) -> dict[str, object]:
    """A lease as created or renewed: how many endpoints it holds is what GET tells."""
    body = lease.to_json()
    del body["endpoints"]
    return body


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI.read_bytes(), content_type="application/json")


async def metrics_text(request: web.Request) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def balancer_table(request: web.Request) -> web.Response:
    table = request.app[BALANCER].describe()
    table["services"] = [row for row in table["services"] if _covers(request, row["namespace"])]
    return web.json_response(table)


SERVICE = "/v1/services/{namespace}/{name}"
ENDPOINT = SERVICE + "/endpoints/{id}"
LEASE = "/v1/leases/{id}"
METRICS = "/metrics"


def make_app(registry: Registry, balancer: Balancer, tokens: TokenFile | None = None,
             metrics_open: bool = False, about: dict[str, str] | None = None
             ) -> web.Application:
    """The API; ``about`` is what ``/v1/status`` tells of this sdns besides its state."""
    app = web.Application(middlewares=[json_errors, authorize], client_max_size=MAX_SET_BODY)
    app[REGISTRY] = registry
    app[BALANCER] = balancer
    if tokens is not None:
        app[TOKENS] = tokens
    app[OPEN_PATHS] = ALWAYS_OPEN | {METRICS} if metrics_open else ALWAYS_OPEN
    app[ABOUT] = about or {}
    app.add_routes([
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get(METRICS, metrics_text),
        web.get("/openapi.json", openapi),
        web.get("/", root),
        web.get("/ui", ui_page),
        web.get(UI_PREFIX + "{file}", ui_file),
        web.get("/v1/status", status),
        web.get("/v1/endpoints", list_all_endpoints),
        web.get("/v1/watch", watch),
        web.get("/v1/balancer", balancer_table),
        web.get("/v1/services", list_services),
        web.get(SERVICE, get_service),
        web.put(SERVICE, put_service),
        web.delete(SERVICE, delete_service),
        web.get(SERVICE + "/endpoints", list_endpoints),
        web.put(SERVICE + "/endpoints", put_endpoint_set),
        web.put(ENDPOINT, put_endpoint),
        web.delete(ENDPOINT, delete_endpoint),
        web.post(ENDPOINT + "/heartbeat", heartbeat),
        web.post("/v1/leases", create_lease),
        web.get(LEASE, get_lease),
        web.post(LEASE + "/renew", renew_lease),
        web.delete(LEASE, delete_lease),
    ])
    return app
