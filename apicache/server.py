"""
HTTP plumbing around the API (SPEC.md section 4): the site and its requests,
connection tracking and draining for a graceful shutdown, the checks made
before routing (``api-key``, duplicate headers), the fast hit path, the one
writer of a cache result, and the access log line.

The Klein application (routes and error handlers) is L{apicache.api}; what
a request resolves to is L{apicache.resolve}.
"""

from __future__ import annotations

import json
import math
from typing import Any, cast
from urllib.parse import unquote_to_bytes as unquote

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint, ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import RESPONSES, HTTPChannel, _GenericHTTPChannelProtocol, datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from apicache.auth import ApiKeys
from apicache.cache import BYPASS, HIT, MISS, REVALIDATED, STALE, CacheRegistry, CacheResult
from apicache.errors import DOMAIN_ERRORS, JSON, ApiError, api_error, error_body
from apicache.httpcache import condition_fails, header_block, not_modified_headers
from apicache.metrics import Metrics
from apicache.resolve import Resolver
from apicache.routes import RESERVED_PATHS
from apicache.tracing import RequestTrace, Tracer
from apicache.tracing import enter as enter_trace
from apicache.tracing import leave as leave_trace

__all__ = ["ApiRequest", "ApiChannel", "ApiSite", "ApiFront", "HTTPService", "refuse", "write_result"]

_UNAUTHENTICATED = frozenset({b"/healthz", b"/readyz"})
_X_CACHE = {c: c.encode("ascii") for c in (HIT, STALE, REVALIDATED, MISS, BYPASS)}


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
        # gets our span as its parent (the API's GET forwards it: a hit
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


class ApiChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that keeps its transport in its site's
    L{ApiSite.connections} while it is connected, so that a shutdown can
    close every connection once its answers are sent.
    """

    site: ApiSite

    _tracked: ITransport | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._tracked = self.transport
        if self._tracked is not None:
            self.site.connections.add(self._tracked)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._tracked is not None:
            self.site.connections.discard(self._tracked)
        try:
            super().connectionLost(reason)
        finally:
            self.site.connection_closed()


def _api_channel(site: ApiSite) -> Any:
    # twisted.web's own factory (_genericHTTPChannelProtocolFactory) with
    # our channel inside: the generic protocol is what makes Site's timeouts
    # and attributes reach the channel.  No h2 here (not installed): with it
    # the generic protocol would swap in an H2Connection, untracked.
    return _GenericHTTPChannelProtocol(ApiChannel())


class ApiSite(server.Site):
    """
    The site: no twisted.web access log (apicache writes its own JSON line),
    a count of requests in flight and the open connections, for a graceful
    shutdown.
    """

    requestFactory = ApiRequest
    protocol = _api_channel
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
        self.connections: set[ITransport] = set()
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

    def connection_closed(self) -> None:
        """
        Called by L{ApiChannel} when a connection is lost: fire
        L{close_connections}'s Deferreds once none is left.
        """
        if not self.connections and self._closed_waiters:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    def close_connections(self) -> Deferred[None]:
        """
        Close every connection once what was written to it is sent (the
        reactor's own shutdown would drop unsent answers).

        @return: a Deferred firing with ``None`` when all are closed.
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
        """
        Count a finished (or abandoned) request: metrics, the trace's span,
        the access log line, and L{when_idle}'s Deferreds.
        """
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
        Return a Deferred firing with ``None`` when no request is in flight.
        """
        d: Deferred[None] = Deferred()
        if self.active == 0:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d


class HTTPService(StreamServerEndpointService):
    """
    Listens for HTTP; on stop, stops accepting and lets requests in flight
    finish for up to ``grace`` seconds.
    """

    log = Logger()
    _raiseSynchronously = True

    def __init__(self, endpoint: IStreamServerEndpoint, site: ApiSite, grace: float, clock: IReactorTime) -> None:
        super().__init__(endpoint, site)
        self.site = site
        self.grace = grace
        self.clock = clock

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, wait for the requests in flight (up to the grace
        period), then close the connections.

        @return: a Deferred firing with ``None`` when done.
        """

        async def drain() -> None:
            started = self.clock.seconds()
            await super(HTTPService, self).stopService()
            if self.site.active:
                self.log.info("waiting up to {grace} s for {n} requests in flight", grace=self.grace, n=self.site.active)
                try:
                    await self.site.when_idle().addTimeout(self.grace, self.clock)
                except DeferredTimeout:
                    self.log.warn("{n} requests still in flight after the grace period", n=self.site.active)
            # let the last answers reach their callers before the reactor
            # drops every connection
            left = max(self.grace - (self.clock.seconds() - started), 0.5)
            try:
                await self.site.close_connections().addTimeout(left, self.clock)
            except DeferredTimeout:
                pass

        return Deferred.fromCoroutine(drain())


def refuse(request: IRequest, error: ApiError) -> bytes:
    """
    Set ``request``'s status and content type for ``error``; return the
    JSON body to write.
    """
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", JSON)
    return error_body(error.code, error.message)


def json_answer(request: IRequest, status: int, body: Any) -> bytes:
    """
    Set ``request``'s status and a JSON content type; return ``body`` as JSON.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    return json.dumps(body).encode()


def write_result(request: Any, result: CacheResult) -> Any:
    """
    Write a cache result's whole answer in one go and finish ``request``:
    the one writer of proxied answers, hits and misses alike.

    This is twisted.web's C{Request.write} for one narrow case, an answer
    with a known body: the status line, the headers already set on the
    request but ``Date`` (``Connection: close`` when the connection does
    not persist), the answer's replayed headers as built once when it
    arrived (``Date`` among them), ``Cache-Status`` with apicache's member,
    ``X-Cache``, ``Age`` and ``Content-Length``, without building and
    re-normalising a C{Headers} object.  A ``HEAD`` gets the same head and
    no body.  A conditional ``GET``/``HEAD`` whose condition fails on a
    stored 2xx answer gets a 304 (L{write_not_modified}).

    @return: C{NOT_DONE_YET} (the request is finished: twisted.web and
        Klein must not write again).
    """
    r = result.response
    status = r.status
    request.cache = result.cache
    age = result.age
    member = result.member
    if member is None:
        # a hit: freshness left, negative once stale (RFC 9211 section 2.2)
        member = b"apicache;hit;ttl=%d" % math.floor(r.expires_at - r.stored_at - (age or 0.0))
    if result.stored and 200 <= status < 300:
        conditions = request.requestHeaders
        if_none_match = conditions.getRawHeaders(b"if-none-match")
        if_modified_since = None if if_none_match else conditions.getRawHeaders(b"if-modified-since")
        if (if_none_match or if_modified_since) and condition_fails(if_none_match, if_modified_since, r.headers):
            return _write_not_modified(request, result, member)
    body = r.body
    request.code = status
    request.code_message = RESPONSES.get(status, b"Unknown Status")
    head = [b"%s %d %s\r\n" % (request.clientproto, status, request.code_message)]
    for name, values in request.responseHeaders.getAllRawHeaders():
        if name != b"Date":
            for value in values:
                head.append(b"%s: %s\r\n" % (name, value))
    # entries built elsewhere than the cache core may lack their wire form
    head.append(r.head or header_block(r.headers))
    x_cache = _X_CACHE[result.cache]
    if age is None:
        head.append(b"%s\r\nX-Cache: %s\r\nContent-Length: %d\r\n\r\n" % (member, x_cache, len(body)))
    else:
        head.append(
            b"%s\r\nX-Cache: %s\r\nAge: %d\r\nContent-Length: %d\r\n\r\n"
            % (member, x_cache, max(0, int(age)), len(body))
        )
    request.startedWriting = 1
    if request.method == b"HEAD":
        request.channel.writeSequence([b"".join(head)])
    else:
        request.sentLength = len(body)
        request.channel.writeSequence([b"".join(head), body])
    request.finish()
    return NOT_DONE_YET


def _write_not_modified(request: Any, result: CacheResult, member: bytes) -> Any:
    """
    Answer a conditional request ``304`` from a stored answer, with no body
    and only the headers SPEC.md section 3 lists.
    """
    request.code = 304
    request.code_message = RESPONSES[304]
    head = [b"%s 304 %s\r\n" % (request.clientproto, request.code_message)]
    for name, values in request.responseHeaders.getAllRawHeaders():
        if name != b"Date":
            for value in values:
                head.append(b"%s: %s\r\n" % (name, value))
    head.append(header_block(not_modified_headers(result.response.headers)))
    head.append(b"%s\r\nX-Cache: %s\r\n" % (member, _X_CACHE[result.cache]))
    if result.age is not None:
        head.append(b"Age: %d\r\n" % max(0, int(result.age)))
    head.append(b"\r\n")
    request.startedWriting = 1
    request.channel.writeSequence([b"".join(head)])
    request.finish()
    return NOT_DONE_YET


class ApiFront(Resource):
    """
    The root resource: checks what must be checked before routing, answers
    a fresh hit at once (L{answer_hit}), and hands everything else to the
    Klein application.
    """

    isLeaf = True

    def __init__(self, inner: IResource, resolver: Resolver, keys: ApiKeys, registry: CacheRegistry) -> None:
        super().__init__()
        self._inner = inner
        self._resolver = resolver
        self._keys = keys
        self._registry = registry
        self._tenant_header = resolver.tenant_header

    def render(self, request: IRequest) -> Any:
        """
        Answer ``request``: an error for a duplicate header, a wrong key or
        an undecodable path, a hit, or whatever the Klein application says.
        """
        headers = request.requestHeaders
        given = headers.getRawHeaders(b"api-key")
        tenants = headers.getRawHeaders(self._tenant_header)
        if (given and len(given) > 1) or (tenants and len(tenants) > 1):
            return refuse(request, ApiError(400, "duplicate_header", "the tenant header or api-key is given more than once"))
        if self._keys.required and request.path not in _UNAUTHENTICATED:
            if not given or not self._keys.accepts(given[0]):
                return refuse(request, ApiError(401, "unauthorized", "api-key missing or wrong"))
        if request.method == b"GET" or request.method == b"HEAD":
            # any twisted.web Request takes the attributes ApiRequest declares
            body = self.answer_hit(cast(ApiRequest, request))
            if body is not None:
                return body
        if not _utf8_path(request.path):
            # Klein would answer a plain-text 400 of its own (and log a
            # traceback): answer the JSON error a route gives instead
            return refuse(request, self._undecodable(request.path))
        return self._inner.render(request)

    def answer_hit(self, request: ApiRequest) -> Any:
        """
        The fast path: answer a GET or HEAD whose fresh answer is held in this
        process, at once, before Klein's dispatch.  Creates no Deferred and
        no coroutine.

        @return: C{NOT_DONE_YET} once answered, or ``None`` to leave the
            request to Klein (a miss, a stale entry, a reserved path, or a
            check that fails: the route resolves it again and answers the
            error through the Klein error handlers).
        """
        if request.path in RESERVED_PATHS:
            return None
        try:
            resolved = self._resolver.resolve(request)
        except DOMAIN_ERRORS:
            return None
        result = self._registry.cache(resolved.tenant, resolved.route.type).hit(resolved.key)
        if result is None:
            return None
        return write_result(request, result)

    def _undecodable(self, path: bytes) -> ApiError:
        """
        Return the error for a path that is not UTF-8 once decoded:
        ``invalid_parameter`` where routes are configured, else ``no_route``.
        """
        try:
            self._resolver.match(path)
        except DOMAIN_ERRORS as e:
            return cast(ApiError, api_error(e))
        return ApiError(400, "invalid_parameter", "the path is not UTF-8 once decoded")


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
