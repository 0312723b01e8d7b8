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
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote_to_bytes as unquote

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed, NotFound

from apicache import __version__
from apicache.cache import BYPASS, HIT, MISS, STALE, CacheRegistry, CacheResult, FetchRequest
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

__all__ = ["CacheAPI", "ApiError", "ApiSite", "ApiRequest", "cache_key"]

_JSON = b"application/json"
_UNAUTHENTICATED = frozenset({b"/healthz", b"/readyz"})
_X_CACHE = {c: [c.encode("ascii")] for c in (HIT, STALE, MISS, BYPASS)}
#: How many valid tenant names are remembered (then forgotten at once).
_MEMO_SIZE = 8192
#: Requests longer than this (URI and keyed header values) are not remembered.
_MEMO_REQUEST_BYTES = 512


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

    _postpath: list[bytes] | None = None

    def process(self) -> None:
        site: ApiSite = self.channel.site  # type: ignore[attr-defined]
        self.started = site.clock.seconds()
        self._counted = True
        site.active += 1
        # log lines written while handling carry the trace id; the upstream
        # gets our span as its parent (CacheAPI._get forwards it: a hit
        # never goes upstream)
        trace = self.trace = site.tracer.start(self.requestHeaders, "apicache")
        token = enter_trace(trace.trace_id)
        try:
            if not site.leaf_root or self.path == b"*":
                super().process()
                return
            # twisted.web's Request.process without what this API never
            # uses, since the hit path is short enough for these to matter:
            # no Server header, the Date formatted once a second, no
            # traversal below a leaf root, postpath split only if Klein
            # asks for it
            self.site = site
            self.responseHeaders.setRawHeaders(b"date", [site.http_date(self.started)])
            self.prepath = []
            self.sitepath: list[bytes] = []
            try:
                self.render(site.resource)
            except BaseException:
                self.processingFailed(Failure())
        finally:
            leave_trace(token)

    @property
    def postpath(self) -> list[bytes]:  # type: ignore[override]
        if self._postpath is None:
            self._postpath = [unquote(p) for p in self.path[1:].split(b"/")]
        return self._postpath

    @postpath.setter
    def postpath(self, value: list[bytes]) -> None:
        self._postpath = value

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
        self.leaf_root = bool(getattr(resource, "isLeaf", False))
        self._date_second = -1
        self._date = b""
        self._idle_waiters: list[Deferred[None]] = []
        #: the transports of open connections, closed gracefully on shutdown
        self.connections: set[Any] = set()
        self._closed_waiters: list[Deferred[None]] = []

    def http_date(self, now: float) -> bytes:
        """
        Return the ``Date`` header value for ``now``, formatted once a second.
        """
        second = int(now)
        if second != self._date_second:
            self._date = datetimeToString(second)
            self._date_second = second
        return self._date

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
        if trace is not None and trace.span is not None:  # only exported spans end
            self.tracer.end(
                trace,
                f"{request.method.decode('ascii', 'replace')} {request.route_type}",
                {"http.status_code": status, "apicache.cache": request.cache, "apicache.tenant": request.tenant},
            )
        if self.access_log:
            method = request.method.decode("ascii", "replace")
            path = request.path.decode("utf-8", "replace")[:512]
            # the message is formatted here: twisted.logger's own formatting
            # of "{method} {path} {status}" cost more than the rest of the line
            text = f"{method} {path} {status}"
            self.log_.info(
                text.replace("{", "{{").replace("}", "}}") if "{" in text or "}" in text else text,
                method=method,
                path=path,
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
        if request.method == b"GET":
            # any twisted.web Request takes the attributes ApiRequest declares
            body = api.answer_hit(cast(ApiRequest, request))
            if body is not None:
                return body
        if not _utf8_path(request.path):
            # Klein would answer a plain-text 400 of its own (and log a
            # traceback): answer the JSON error a route gives instead
            return api.refuse(request, api.undecodable(request))
        return self._inner.render(request)


def _utf8_path(path: bytes) -> bool:
    """
    Return whether ``path`` is UTF-8 once percent-decoded (as Klein needs).
    """
    if path.isascii() and b"%" not in path:
        return True
    try:
        unquote(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
        #: what HTTP DELETE and /clear call: the registry, or with several
        #: workers something that also reaches the siblings
        self.invalidator: Any = registry
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
        self._tenants: dict[bytes, str] = {}
        self._keys: dict[tuple[Any, ...], tuple[Route, tuple[str, ...], str, str, CacheKey]] = {}

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
        raw = values[0]
        tenant = self._tenants.get(raw)
        if tenant is not None:
            return tenant
        try:
            tenant = sys.intern(validate_tenant(raw.decode("ascii")))
        except (InvalidTenant, UnicodeDecodeError) as e:
            msg = str(e) if isinstance(e, InvalidTenant) else "the tenant may only hold A-Z a-z 0-9 . _ : -"
            raise ApiError(400, "invalid_tenant", msg) from None
        # valid names only, remembered so that the hit path neither decodes
        # nor matches again and every key of a tenant shares one string
        if len(self._tenants) >= _MEMO_SIZE:
            self._tenants.clear()
        self._tenants[raw] = tenant
        return tenant

    def _check_claim(self, request: IRequest, tenant: str) -> None:
        claim = _bearer_claim(request.requestHeaders.getRawHeaders(b"authorization"), self._tenant_claim)
        if claim != tenant:
            raise ApiError(403, "tenant_mismatch", f"the token's {self._tenant_claim!r} claim does not match the tenant")

    def _match(self, request: IRequest) -> tuple[Route, tuple[str, ...]]:
        try:
            found = self.router.resolve(request.path)
            if found is None:
                raise ApiError(404, "no_route", "no route matches this path")
            return found
        except InvalidParameter as e:
            raise ApiError(400, "invalid_parameter", str(e)) from None

    def undecodable(self, request: IRequest) -> ApiError:
        """
        Return the error for a request whose path is not UTF-8 once decoded:
        ``invalid_parameter`` where routes are configured, else ``no_route``.
        """
        try:
            self._match(request)
        except ApiError as e:
            return e
        return ApiError(400, "invalid_parameter", "the path is not UTF-8 once decoded")

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
            n = await self.invalidator.clear(tenant)
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

    def _key(self, request: ApiRequest) -> tuple[Route, tuple[str, ...], str, str, CacheKey]:
        """
        Check a GET on a route and return its route, parameters, tenant,
        canonical query and cache key.  Sets the request's ``route_type``
        and ``tenant`` (for the access log) as they become known.

        @raise ApiError: a check failed.
        """
        headers = request.requestHeaders
        tenants = headers.getRawHeaders(self.tenant_header)
        keyed = [headers.getRawHeaders(h) for h in self._keyed]
        # the key is a pure function of these: a request seen before is
        # neither matched, decoded nor canonicalized again
        seen = (
            request.uri,
            tenants[0] if tenants else None,
            tuple([tuple(v) if v else None for v in keyed]) if any(keyed) else (),
        )
        found = self._keys.get(seen)
        if found is None:
            route, params = self._match(request)
            request.route_type = route.type
            tenant = self._tenant(request, required=True)
            assert tenant is not None
            request.tenant = tenant
            raw_query = request.uri.partition(b"?")[2]
            try:
                query = canonical_query(raw_query) if raw_query else ""
            except InvalidQuery as e:
                raise ApiError(400, "invalid_query", str(e)) from None
            found = (route, params, tenant, query, cache_key(tenant, route, params, query, keyed))
            # only short requests are remembered: the memo's size stays a
            # small fixed overhead whatever callers send
            if len(request.uri) + sum([len(v) for vs in keyed if vs for v in vs]) <= _MEMO_REQUEST_BYTES:
                if len(self._keys) >= _MEMO_SIZE:
                    self._keys.clear()
                self._keys[seen] = found
        else:
            request.route_type = found[0].type
            request.tenant = found[2]
        if self._tenant_claim:
            self._check_claim(request, found[2])
        return found

    def answer_hit(self, request: ApiRequest) -> bytes | None:
        """
        The fast path: answer a GET whose fresh answer is cached, at once,
        before Klein's dispatch.  Return the body, or ``None`` to leave the
        request to Klein (a miss, a stale entry, a reserved path, or any
        check that fails: Klein's route runs the same checks again and
        answers the error).  Creates no Deferred and no coroutine.
        """
        if request.path in RESERVED_PATHS:
            return None
        try:
            route, _, tenant, _, key = self._key(request)
        except ApiError:
            return None
        result = self.registry.cache(tenant, route.type).hit(key)
        if result is None:
            return None
        return self._send_hit(request, result)

    def _send_hit(self, request: ApiRequest, result: CacheResult) -> Any:
        """
        Write a hit's whole answer in one go and finish ``request``; return
        C{NOT_DONE_YET} (it is done, twisted.web must not write again).

        This is twisted.web's C{Request.write} for one narrow case, a GET
        answered with a known body: the status line and the headers already
        set (``Date``, ``Connection: close`` when the connection does not
        persist) are written with the stored headers, ``X-Cache``, ``Age``
        and ``Content-Length`` without building and re-normalising a
        C{Headers} object on every hit.
        """
        r = result.response
        body = r.body
        request.cache = result.cache
        request.code = r.status
        request.code_message = RESPONSES.get(r.status, b"Unknown Status")
        head = [b"%s %d %s\r\n" % (request.clientproto, r.status, request.code_message)]
        for name, values in request.responseHeaders.getAllRawHeaders():
            for value in values:
                head.append(b"%s: %s\r\n" % (name, value))
        for name, value in r.headers:
            head.append(b"%s: %s\r\n" % (_canonical(name), value))
        head.append(
            b"X-Cache: %s\r\nAge: %d\r\nContent-Length: %d\r\n\r\n"
            % (_X_CACHE[result.cache][0], max(0, int(result.age or 0)), len(body))
        )
        request.startedWriting = 1
        request.sentLength = len(body)
        request.channel.writeSequence([b"".join(head), body])
        request.finish()
        return NOT_DONE_YET

    def _get(self, request: ApiRequest) -> Any:
        route, params, tenant, query, key = self._key(request)
        headers = request.requestHeaders
        trace = getattr(request, "trace", None)
        if trace is not None:
            headers.setRawHeaders(b"traceparent", [trace.traceparent()])
        forwarded: list[tuple[bytes, bytes]] = []
        for name in self._forward:
            for value in headers.getRawHeaders(name, ()):
                forwarded.append((name, value))
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
        out.setRawHeaders(b"x-cache", _X_CACHE[result.cache])
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
            n = await self.invalidator.invalidate(tenant, route.type, params)
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


_CANONICAL: dict[bytes, bytes] = {}


def _canonical(name: bytes) -> bytes:
    """
    Return a stored header's name as twisted.web writes it (``ETag``,
    ``Content-Type``), learnt from twisted.web itself once per name.
    """
    found = _CANONICAL.get(name)
    if found is None:
        found = next(iter(Headers({name: [b""]}).getAllRawHeaders()))[0]
        if len(_CANONICAL) < 1024:
            _CANONICAL[name] = found
    return found


def cache_key(
    tenant: str,
    route: Route,
    params: tuple[str, ...],
    query: str,
    keyed_values: Sequence[Sequence[bytes] | None],
) -> CacheKey:
    """
    Return the cache key of a request: its tenant, route, decoded path
    parameters, canonical query and the raw values of the keyed headers.
    """
    # interned: keys of one route without a query or keyed headers share
    # one variant string (memory per entry)
    return CacheKey(
        tenant,
        route.type,
        params,
        sys.intern(variant(route.config.fingerprint, query, [header_value(v) for v in keyed_values])),
    )


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

