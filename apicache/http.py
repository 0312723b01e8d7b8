"""
The HTTP API (SPEC.md section 4): a Klein application behind a small front
resource that checks the ``api-key`` and duplicate headers before routing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from apicache import __version__
from apicache.cache import CacheRegistry, CacheResult, FetchRequest
from apicache.config import Config
from apicache.health import Readiness
from apicache.keys import (
    CacheKey,
    InvalidParameter,
    InvalidQuery,
    InvalidTenant,
    canonical_query,
    header_value,
    validate_tenant,
    variant,
)
from apicache.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from apicache.metrics import Metrics
from apicache.routes import RESERVED_PATHS, Route, Router
from apicache.store.interface import StoreUnavailable
from apicache.tracing import RequestTrace, Tracer
from apicache.tracing import enter as enter_trace
from apicache.tracing import leave as leave_trace
from apicache.upstream import BodyTooLarge, Overloaded, UpstreamTimeout, UpstreamUnreachable

__all__ = ["CacheAPI", "ApiError", "ApiSite", "ApiRequest"]

_JSON = b"application/json"
_UNAUTHENTICATED = frozenset({b"/healthz", b"/readyz"})


class ApiError(Exception):
    """
    An error answered as ``{"error": code, "message": message}``.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message


def _error_body(code: str, message: str, **extra: str) -> bytes:
    return json.dumps({"error": code, "message": message, **extra}).encode()


class ApiRequest(server.Request):
    """
    A request that counts itself in its site's in-flight requests (for a
    graceful shutdown) and writes the access log line when it finishes.
    """

    route_type = "-"
    tenant = "-"
    cache = "-"
    trace: RequestTrace | None = None
    _counted = False

    def process(self) -> None:
        site: ApiSite = self.channel.site  # type: ignore[attr-defined]
        self.started = site.clock.seconds()
        self._counted = True
        site.active += 1
        # the upstream gets our span as its parent (forwarded like any
        # traceparent); log lines written while handling carry the trace id
        trace = self.trace = site.tracer.start(self.requestHeaders, "apicache")
        self.requestHeaders.setRawHeaders(b"traceparent", [trace.traceparent()])
        token = enter_trace(trace.trace_id)
        try:
            super().process()
        finally:
            leave_trace(token)

    def _done(self) -> None:
        if self._counted:
            self._counted = False
            self.site.request_done(self)  # type: ignore[union-attr]

    def finish(self) -> None:
        super().finish()
        self._done()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._done()


class ApiSite(server.Site):
    """
    The site: no twisted.web access log (apicache writes its own JSON line),
    and a count of requests in flight for a graceful shutdown.
    """

    requestFactory = ApiRequest
    noisy = False
    log_ = Logger()

    def __init__(
        self,
        resource: IResource,
        clock: IReactorTime,
        metrics: Metrics | None = None,
        access_log: bool = True,
        tracer: Tracer | None = None,
    ) -> None:
        super().__init__(resource)
        self.clock = clock
        self.tracer = tracer or Tracer()
        self.metrics = metrics
        self.access_log = access_log
        self.active = 0
        self.displayTracebacks = False
        self._idle_waiters: list[Deferred[None]] = []
        #: the transports of open connections, closed gracefully on shutdown
        self.connections: set[Any] = set()
        self._closed_waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        """
        Return the site's protocol for a new connection, tracked in
        L{connections} until it is lost.
        """
        protocol = super().buildProtocol(addr)
        if protocol is None:
            return None
        made, lost = protocol.makeConnection, protocol.connectionLost
        transports = []

        def makeConnection(transport: Any) -> None:
            transports.append(transport)
            self.connections.add(transport)
            made(transport)

        def connectionLost(reason: Failure) -> None:
            for t in transports:
                self.connections.discard(t)
            try:
                lost(reason)
            finally:
                if not self.connections and self._closed_waiters:
                    waiters, self._closed_waiters = self._closed_waiters, []
                    for d in waiters:
                        d.callback(None)

        protocol.makeConnection, protocol.connectionLost = makeConnection, connectionLost
        return protocol

    def close_connections(self) -> Deferred[None]:
        """
        Close every connection once what was written to it is sent (the
        reactor's own shutdown would drop unsent answers).  Fire when all
        are closed.
        """
        d: Deferred[None] = Deferred()
        if not self.connections:
            d.callback(None)
            return d
        self._closed_waiters.append(d)
        for transport in list(self.connections):
            transport.loseConnection()
        return d

    def log(self, request: Any) -> None:
        """
        Write nothing: see L{request_done}.
        """

    def request_done(self, request: ApiRequest) -> None:
        self.active -= 1
        status = request.code
        if self.metrics is not None:
            self.metrics.count_request(request.route_type, status, request.cache, request.tenant)
        trace = request.trace
        if trace is not None:
            self.tracer.end(
                trace,
                f"{request.method.decode('ascii', 'replace')} {request.route_type}",
                {"http.status_code": status, "apicache.cache": request.cache, "apicache.tenant": request.tenant},
            )
        if self.access_log:
            self.log_.info(
                "{method} {path} {status}",
                method=request.method.decode("ascii", "replace"),
                path=request.path.decode("utf-8", "replace")[:512],
                route=request.route_type,
                tenant=request.tenant,
                status=status,
                cache=request.cache,
                duration_ms=round((self.clock.seconds() - request.started) * 1000, 3),
                trace_id=trace.trace_id if trace is not None else None,
            )
        if self.active == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def when_idle(self) -> Deferred[None]:
        """
        Fire when no request is in flight.
        """
        d: Deferred[None] = Deferred()
        if self.active == 0:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d


class _Front(Resource):
    """
    Checks what must be checked before routing, then hands over to Klein.
    """

    isLeaf = True

    def __init__(self, api: CacheAPI, inner: IResource) -> None:
        super().__init__()
        self._api = api
        self._inner = inner

    def render(self, request: IRequest) -> Any:
        api = self._api
        headers = request.requestHeaders
        given = headers.getRawHeaders(b"api-key")
        tenants = headers.getRawHeaders(api.tenant_header)
        if (given and len(given) > 1) or (tenants and len(tenants) > 1):
            return api.refuse(request, ApiError(400, "duplicate_header", "the tenant header or api-key is given more than once"))
        if api.key_required and request.path not in _UNAUTHENTICATED:
            if not given or not api.key_matches(given[0]):
                return api.refuse(request, ApiError(401, "unauthorized", "api-key missing or wrong"))
        return self._inner.render(request)


class CacheAPI:
    """
    The HTTP API over a L{CacheRegistry}.

    @ivar info_sources: callables returning dicts merged into ``GET /``
        (the event listener adds its counters).
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        config: Config,
        registry: CacheRegistry,
        router: Router,
        clock: IReactorTime,
        readiness: Readiness | None = None,
        metrics: Metrics | None = None,
        node: str | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.router = router
        self.clock = clock
        self.readiness = readiness or Readiness()
        self.metrics = metrics or Metrics()
        self.node = node or socket.gethostname()
        self.started = clock.seconds()
        self.info_sources: list[Callable[[], dict[str, Any]]] = []
        server_cfg = config.server
        self.tenant_header = server_cfg.tenant_header.encode("ascii")
        self._api_keys = [k.encode("utf-8") for k in server_cfg.api_keys]
        # SPEC.md section 4: keys are checked whenever some are configured
        # (the configuration refuses none without allow_anonymous)
        self.key_required = bool(self._api_keys)
        self._tenant_claim = server_cfg.tenant_claim
        upstream = config.upstream
        self._forward = [h.encode("ascii") for h in upstream.forward_headers]
        self._keyed = [h.encode("ascii") for h in upstream.keyed_headers]

    def resource(self) -> IResource:
        """
        Return the root resource to serve.
        """
        return _Front(self, self.app.resource())

    # -- checks ------------------------------------------------------------

    def key_matches(self, given: bytes) -> bool:
        """
        Return whether ``given`` is one of the api keys, comparing with every
        key in constant time.
        """
        ok = False
        for k in self._api_keys:
            ok |= hmac.compare_digest(given, k)
        return ok

    def refuse(self, request: IRequest, error: ApiError) -> bytes:
        """
        Answer ``request`` with ``error``; return the body.
        """
        request.setResponseCode(error.status)
        request.setHeader(b"content-type", _JSON)
        return _error_body(error.code, error.message)

    def _tenant(self, request: IRequest, required: bool) -> str | None:
        values = request.requestHeaders.getRawHeaders(self.tenant_header)
        if not values:
            if required:
                raise ApiError(400, "missing_tenant", f"the {self.tenant_header.decode()} header is required")
            return None
        try:
            return validate_tenant(values[0].decode("ascii"))
        except (InvalidTenant, UnicodeDecodeError) as e:
            msg = str(e) if isinstance(e, InvalidTenant) else "the tenant may only hold A-Z a-z 0-9 . _ : -"
            raise ApiError(400, "invalid_tenant", msg) from None

    def _check_claim(self, request: IRequest, tenant: str) -> None:
        claim = _bearer_claim(request.requestHeaders.getRawHeaders(b"authorization"), self._tenant_claim)
        if claim != tenant:
            raise ApiError(403, "tenant_mismatch", f"the token's {self._tenant_claim!r} claim does not match the tenant")

    def _match(self, request: IRequest) -> tuple[Route, tuple[str, ...]]:
        try:
            found = self.router.match(request.path)
            if found is None:
                raise ApiError(404, "no_route", "no route matches this path")
            route, raw = found
            return route, route.decode(raw)
        except InvalidParameter as e:
            raise ApiError(400, "invalid_parameter", str(e)) from None

    # -- reserved paths ----------------------------------------------------

    @app.route("/", methods=["GET"])
    def info(self, request: IRequest) -> bytes:
        stats = self.registry.store.stats()
        body: dict[str, Any] = {
            "service": "apicache",
            "version": __version__,
            "node": self.node,
            "uptime_s": round(self.clock.seconds() - self.started, 3),
            "tenants": self.registry.tenants(),
            "entries": stats["entries"],
            "bytes": stats["bytes"],
        }
        for source in self.info_sources:
            body.update(source())
        return self._json(request, 200, body)

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        return self._json(request, 200, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: IRequest) -> bytes:
        failing = self.readiness.failing()
        if failing:
            return self._json(request, 503, {"ready": False, "failing": failing})
        return self._json(request, 200, {"ready": True})

    @app.route("/metrics", methods=["GET"])
    def metrics_(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE.encode())
        return self.metrics.render()

    @app.route("/clear", methods=["DELETE"])
    async def clear(self, request: ApiRequest) -> bytes:
        tenant = self._tenant(request, required=False)
        if tenant is not None:
            request.tenant = tenant
        try:
            n = await self.registry.clear(tenant)
        except StoreUnavailable:
            raise ApiError(503, "store_unavailable", "the store could not be reached; nothing was cleared") from None
        return self._json(request, 200, {"invalidated": n})

    # -- routes ------------------------------------------------------------

    @app.route("/<path:_rest>", methods=None)
    def proxy(self, request: ApiRequest, _rest: str) -> Any:
        if request.path in RESERVED_PATHS:
            raise MethodNotAllowed()
        method = request.method
        if method == b"GET" or method == b"HEAD":
            return self._get(request)
        if method == b"DELETE":
            return Deferred.fromCoroutine(self._delete(request))
        self._match(request)
        raise ApiError(405, "method_not_allowed", f"{method.decode('ascii', 'replace')} is not allowed here")

    def _get(self, request: ApiRequest) -> Any:
        route, params = self._match(request)
        request.route_type = route.type
        tenant = self._tenant(request, required=True)
        assert tenant is not None
        request.tenant = tenant
        if self._tenant_claim:
            self._check_claim(request, tenant)
        raw_query = request.uri.partition(b"?")[2]
        try:
            query = canonical_query(raw_query)
        except InvalidQuery as e:
            raise ApiError(400, "invalid_query", str(e)) from None
        headers = request.requestHeaders
        forwarded: list[tuple[bytes, bytes]] = []
        for name in self._forward:
            for value in headers.getRawHeaders(name, ()):
                forwarded.append((name, value))
        key = CacheKey(
            tenant,
            route.type,
            params,
            variant(route.config.fingerprint, query, [header_value(headers.getRawHeaders(h)) for h in self._keyed]),
        )
        fetch = FetchRequest(route.upstream_path(params, query), forwarded)
        result = self.registry.cache(tenant, route.type).get(key, fetch)
        if isinstance(result, CacheResult):
            return self._write(request, result)
        return result.addCallbacks(lambda r: self._write(request, r), lambda f: self._upstream_failed(f))

    def _upstream_failed(self, failure: Failure) -> None:
        e = failure.value
        if isinstance(e, Overloaded):
            raise ApiError(503, "overloaded", "too many upstream fetches in flight")
        if isinstance(e, UpstreamTimeout):
            raise ApiError(504, "upstream_timeout", str(e))
        if isinstance(e, BodyTooLarge):
            raise ApiError(502, "upstream_unreachable", f"the upstream answer is too large: {e}")
        if isinstance(e, UpstreamUnreachable):
            raise ApiError(502, "upstream_unreachable", str(e))
        failure.raiseException()

    def _write(self, request: ApiRequest, result: CacheResult) -> bytes:
        r = result.response
        request.cache = result.cache
        request.setResponseCode(r.status)
        request.defaultContentType = None
        out = request.responseHeaders
        for k, v in r.headers:
            out.addRawHeader(k, v)
        out.setRawHeaders(b"x-cache", [result.cache.encode("ascii")])
        if result.age is not None:
            out.setRawHeaders(b"age", [b"%d" % max(0, int(result.age))])
        out.setRawHeaders(b"content-length", [b"%d" % len(r.body)])
        return r.body

    async def _delete(self, request: ApiRequest) -> bytes:
        route, params = self._match(request)
        request.route_type = route.type
        tenant = self._tenant(request, required=False)
        if tenant is not None:
            request.tenant = tenant
        try:
            n = await self.registry.invalidate(tenant, route.type, params)
        except StoreUnavailable:
            raise ApiError(503, "store_unavailable", "the store could not be reached; nothing was invalidated") from None
        return self._json(request, 200, {"invalidated": n})

    # -- errors ------------------------------------------------------------

    def _json(self, request: IRequest, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", _JSON)
        return json.dumps(body).encode()

    @app.handle_errors(ApiError)
    def _api_error(self, request: IRequest, failure: Failure) -> bytes:
        return self.refuse(request, failure.value)  # type: ignore[arg-type]

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return self.refuse(request, ApiError(404, "no_route", "no route matches this path"))

    @app.handle_errors(MethodNotAllowed)
    def _not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return self.refuse(
            request,
            ApiError(405, "method_not_allowed", f"{request.method.decode('ascii', 'replace')} is not allowed here"),
        )

    @app.handle_errors
    def _internal(self, request: IRequest, failure: Failure) -> bytes:  # type: ignore[misc]
        error_id = uuid.uuid4().hex
        self.log.failure(
            "internal error {error_id} answering {method} {path}",
            failure,
            error_id=error_id,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace")[:512],
            trace_id=getattr(getattr(request, "trace", None), "trace_id", None),
        )
        request.setResponseCode(500)
        request.setHeader(b"content-type", _JSON)
        return _error_body("internal_error", "an unexpected error occurred", id=error_id)


def _bearer_claim(values: Sequence[bytes] | None, claim: str) -> Any:
    """
    Return ``claim`` from the bearer token's JWT payload (read, not
    verified), or ``None``.
    """
    if not values:
        return None
    scheme, _, token = values[0].partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    parts = token.strip().split(b".")
    if len(parts) != 3 or len(token) > 16384:
        return None
    payload = parts[1] + b"=" * (-len(parts[1]) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    value = data.get(claim)
    return value if isinstance(value, str) else (str(value) if isinstance(value, int) else None)

