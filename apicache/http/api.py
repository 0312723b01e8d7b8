"""
The HTTP API (SPEC.md section 4): the Klein application, its routes and
its error handlers.  Every domain exception is answered by a
C{handle_errors} handler through L{apicache.http.errors.api_error}.

The plumbing around it (the site, the checks before routing, the fast hit
path, the writer) is L{apicache.http.channel}; :meth:`CacheAPI.resource` puts the
two together.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from apicache import __version__
from apicache.auth.apikey import ApiKeys
from apicache.auth.tokens import TokenVerifier
from apicache.cache.keys import CacheKey
from apicache.cache.policy import normalise_accept_encoding, only_if_cached
from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import RESERVED_PATHS, Route, Router
from apicache.cache.tags import InvalidTag, decode_tag_path
from apicache.cache.tenant import CacheResult, FetchRequest
from apicache.config import Config
from apicache.http.channel import ApiRequest
from apicache.http.errors import DOMAIN_ERRORS, ApiError, api_error, error_body
from apicache.http.errors import JSON as _JSON
from apicache.http.front import ApiFront
from apicache.http.passthrough import WRITE_HEADERS, PassThrough
from apicache.http.resolve import Resolver
from apicache.http.writers import json_answer, refuse, write_result
from apicache.ops.health import Readiness
from apicache.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from apicache.ops.metrics import Metrics
from apicache.store.eviction import acting_for
from apicache.upstream.client import UpstreamError
from apicache.upstream.requestheaders import CallerHeaders

__all__ = ["CacheAPI", "ApiError", "allowed_methods"]

#: What the reserved paths answer to (the ``Allow`` of their 405s).
_RESERVED_ALLOW = {b"/clear": b"DELETE"}
_READ_ALLOW = b"GET, HEAD"


def allowed_methods(route: Route) -> bytes:
    """
    Return the ``Allow`` value of a route: ``GET``, ``HEAD``, ``DELETE``,
    ``PURGE`` and its ``pass_methods``.
    """
    methods = ["GET", "HEAD", "DELETE", "PURGE", *(m for m in route.config.pass_methods if m != "DELETE")]
    return ", ".join(methods).encode("ascii")


class CacheAPI:
    """
    The HTTP API over a L{CacheRegistry}.

    @ivar info_sources: callables returning dicts merged into ``GET /``
        (the event listener adds its counters).
    @ivar invalidator: what ``DELETE`` and ``/clear`` call: the registry, or
        with several workers something that also reaches the siblings.
    @ivar workers_figures: with several workers, returns a Deferred firing
        with every worker's L{figures} (each with its ``worker`` index and
        ``pid``): ``GET /`` then sums them; C{None} in a single process.
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
        verifier: TokenVerifier | None = None,
    ) -> None:
        """
        @param verifier: verifies bearer tokens (C{[auth]} set), else C{None}.
        """
        self.config = config
        self.registry = registry
        self.router = router
        self.clock = clock
        self.readiness = readiness or Readiness()
        self.metrics = metrics or Metrics()
        self.node = node or socket.gethostname()
        self.started = clock.seconds()
        self.info_sources: list[Callable[[], dict[str, Any]]] = []
        self.invalidator: Any = registry
        self.workers_figures: Callable[[], Deferred[list[dict[str, Any]]]] | None = None
        self.resolver = Resolver(config, router)
        self.caller_headers = CallerHeaders(config.upstream.forward_headers)
        self.keys = ApiKeys(config.server.api_keys, config.server.admin_api_keys)
        self.verifier = verifier
        self.passthrough = PassThrough(config, registry.upstream, clock)

    def resource(self) -> IResource:
        """
        Return the root resource to serve: the checks before routing and the
        fast hit path (L{ApiFront}) in front of the Klein application.
        """
        return ApiFront(self.app.resource(), self.resolver, self.keys, self.registry, self.verifier)

    # -- reserved paths ----------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """
        Return this process's ``tenants``, ``entries``, ``bytes``, ``hits``,
        ``misses`` and ``hit_ratio`` (hits over hits and misses, 0.0 before
        any).
        """
        stats = self.registry.store.stats()
        hits, misses = self.metrics.totals()
        return {
            "tenants": self.registry.tenants(),
            "entries": stats["entries"],
            "bytes": stats["bytes"],
            "hits": hits,
            "misses": misses,
            "hit_ratio": _ratio(hits, misses),
        }

    @app.route("/", methods=["GET"])
    def info(self, request: IRequest) -> bytes | Deferred[bytes]:
        """
        Return ``GET /``'s JSON: service, version, node, uptime, counts and
        the hit ratio.  With several workers (L{workers_figures}) a
        Deferred firing with it: ``entries``, ``bytes``, ``hits`` and
        ``misses`` summed over the workers, ``tenants`` the most any holds,
        ``hit_ratio`` of the sums, and each worker's own in ``per_worker``.
        """
        body: dict[str, Any] = {
            "service": "apicache",
            "version": __version__,
            "node": self.node,
            "uptime_s": round(self.clock.seconds() - self.started, 3),
            **self.figures(),
        }
        for source in self.info_sources:
            body.update(source())
        gather = self.workers_figures
        if gather is None:
            return json_answer(request, 200, body)

        def summed(per_worker: list[dict[str, Any]]) -> bytes:
            for k in ("entries", "bytes", "hits", "misses"):
                body[k] = sum(w[k] for w in per_worker)
            body["tenants"] = max(w["tenants"] for w in per_worker)
            body["hit_ratio"] = _ratio(body["hits"], body["misses"])
            body["per_worker"] = per_worker
            return json_answer(request, 200, body)

        return gather().addCallback(summed)

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        """
        Return ``200`` while the process serves.
        """
        return json_answer(request, 200, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: IRequest) -> bytes:
        """
        Return ``{"ready": true}``, or a ``503`` naming what is failing.
        """
        failing = self.readiness.failing()
        if failing:
            return json_answer(request, 503, {"ready": False, "failing": failing})
        return json_answer(request, 200, {"ready": True})

    @app.route("/metrics", methods=["GET"])
    def metrics_(self, request: IRequest) -> bytes | Deferred[bytes]:
        """
        Return the metrics in Prometheus text format (a Deferred firing
        with them when they are every worker's, see L{Metrics.scrape}).
        """
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE.encode())
        return self.metrics.scrape()

    @app.route("/clear", methods=["DELETE"])
    async def clear(self, request: ApiRequest) -> bytes:
        """
        Drop every entry (of the tenant, when the header is given); return
        ``{"invalidated": N}``.

        @raise StoreUnavailable: answered ``503 store_unavailable``.
        """
        tenant = self.resolver.claimed_tenant(request, required=False)
        if tenant is not None:
            request.tenant = tenant
        else:
            self.require_admin(request)
        n = await self.invalidator.clear(tenant)
        return json_answer(request, 200, {"invalidated": n})

    @app.route("/tags/<path:_tag>", methods=["DELETE"])
    async def purge_tag(self, request: ApiRequest, _tag: str) -> bytes:
        """
        Drop every entry carrying the tag (of the tenant, when the header is
        given); return ``{"invalidated": N}``.  The tag is the raw path
        segment percent-decoded once (Klein's own decoding is not used).

        @raise ApiError: ``invalid_parameter`` when it is not a tag;
            ``403 admin_required`` without a tenant header and an admin key
            while ``server.admin_api_keys`` is set.
        @raise StoreUnavailable: answered ``503 store_unavailable``.
        """
        try:
            tag = decode_tag_path(request.path[len(b"/tags/") :])
        except InvalidTag as e:
            raise ApiError(400, "invalid_parameter", str(e)) from None
        tenant = self.resolver.claimed_tenant(request, required=False)
        if tenant is not None:
            request.tenant = tenant
        else:
            self.require_admin(request)
        n = await self.invalidator.invalidate_tags(tenant, (tag,), "http")
        return json_answer(request, 200, {"invalidated": n})
    def require_admin(self, request: IRequest) -> None:
        """
        Check that ``request`` may purge every tenant (a ``DELETE``,
        ``PURGE``, tag purge or ``/clear`` without a tenant header): while
        ``server.admin_api_keys`` is set, only with one of them.

        @raise ApiError: ``403 admin_required``.
        """
        if not self.keys.may_purge_every_tenant(request.requestHeaders.getRawHeaders(b"api-key")):
            raise ApiError(403, "admin_required", "a purge of every tenant needs an admin api-key")

    # -- routes ------------------------------------------------------------

    @app.route("/<path:_rest>", methods=None)
    def proxy(self, request: ApiRequest, _rest: str) -> Any:
        """
        Answer a request on a configured route: ``GET``/``HEAD`` from the
        cache or the upstream; a method of the route's ``pass_methods``
        forwarded; ``PURGE``, and ``DELETE`` where it is not forwarded,
        invalidate; anything else is ``405`` with ``Allow``.  Returns
        C{NOT_DONE_YET}, bytes, or a Deferred of either.
        """
        if request.path in RESERVED_PATHS:
            request.setHeader(b"allow", _RESERVED_ALLOW.get(request.path, _READ_ALLOW))
            raise MethodNotAllowed()
        method = request.method
        if method == b"GET" or method == b"HEAD":
            return self._get(request)
        route, _ = self.resolver.match(request.path)
        request.route_type = route.type
        name = method.decode("ascii", "replace")
        if name in route.config.pass_methods:
            if method == b"DELETE" and not request.requestHeaders.hasHeader(self.resolver.tenant_header):
                raise ApiError(
                    400,
                    "missing_tenant",
                    f"the {self.resolver.tenant_header.decode()} header is required: "
                    "this route forwards DELETE (PURGE invalidates)",
                )
            return Deferred.fromCoroutine(self._write(request))
        if method == b"DELETE" or method == b"PURGE":
            return Deferred.fromCoroutine(self._delete(request))
        request.setHeader(b"allow", allowed_methods(route))
        raise ApiError(405, "method_not_allowed", f"{name} is not allowed here")

    def _get(self, request: ApiRequest) -> Any:
        """
        Answer a GET or HEAD on a route: a hit or stale entry at once, else
        a Deferred firing when the miss is answered.
        """
        resolved = self.resolver.resolve(request)
        if only_if_cached(request.requestHeaders.getRawHeaders(b"cache-control")):
            return self._only_if_cached(request, resolved.tenant, resolved.route.type, resolved.key, resolved.encoding)
        forwarded = self.caller_headers.of(request.requestHeaders, _traceparent(request), resolved.encoding)
        fetch = FetchRequest(
            resolved.route.upstream_path(resolved.params, resolved.query),
            forwarded,
            resolved.encoding,
            request.requestHeaders,
        )
        cache = self.registry.cache(resolved.tenant, resolved.route.type)
        # what this request stores counts for its client (SPEC.md section 3)
        with acting_for(self.keys.client(request.requestHeaders.getRawHeaders(b"api-key"))):
            result = cache.get(resolved.key, fetch)
        if isinstance(result, CacheResult):
            return write_result(request, result)
        # an upstream failure errbacks to the handle_errors handlers
        return result.addCallback(lambda r: write_result(request, r))

    def _only_if_cached(
        self, request: ApiRequest, tenant: str, route_type: str, key: CacheKey, encoding: bytes = b"identity"
    ) -> Any:
        """
        Answer a GET or HEAD with ``Cache-Control: only-if-cached`` (RFC
        9111 section 5.2.1.7, SPEC.md section 3, v3) from what is stored,
        or ``504 not_cached`` with ``X-Cache: MISS`` and ``Cache-Status:
        apicache; detail=not-cached``, never calling the upstream.
        """

        def answer(found: CacheResult | None) -> Any:
            if found is not None:
                return write_result(request, found)
            request.cache = "MISS"
            request.setHeader(b"x-cache", b"MISS")
            request.setHeader(b"cache-status", b"apicache; detail=not-cached")
            return refuse(request, ApiError(504, "not_cached", "only-if-cached: nothing usable is stored"))

        # a copy loaded from Redis into this process counts for the client too
        with acting_for(self.keys.client(request.requestHeaders.getRawHeaders(b"api-key"))):
            found = self.registry.cache(tenant, route_type).cached(key, request.requestHeaders, encoding)
        if isinstance(found, Deferred):
            return found.addCallback(answer)
        return answer(found)

    async def _write(self, request: ApiRequest) -> Any:
        """
        Forward a write (SPEC.md section 4): the tenant is required, the body
        is bounded by ``server.max_body_bytes``, the answer is passed
        through.
        """
        resolved = self.resolver.resolve(request)
        body = self.passthrough.body(request)
        # as on a GET, only an encoding the caller accepts and apicache
        # never has to decode: gzip or identity
        accept = normalise_accept_encoding(request.requestHeaders.getRawHeaders(b"accept-encoding"))
        headers = self.caller_headers.of(request.requestHeaders, _traceparent(request), accept, WRITE_HEADERS)
        result = await self.passthrough.forward(
            request.method,
            resolved.route.upstream_path(resolved.params, resolved.query),
            headers,
            body,
            resolved.tenant,
            resolved.route.config,
            resolved.params,
            self.invalidator,
        )
        return write_result(request, result)

    async def _delete(self, request: ApiRequest) -> bytes:
        """
        Drop the entries of a resource (``PURGE``, or a ``DELETE`` the route
        does not forward), of the tenant given or of every tenant; answer
        ``{"invalidated": N}``.
        """
        route, params = self.resolver.match(request.path)
        request.route_type = route.type
        tenant = self.resolver.claimed_tenant(request, required=False)
        if tenant is not None:
            request.tenant = tenant
        else:
            self.require_admin(request)
        n = await self.invalidator.invalidate(tenant, route.type, params)
        return json_answer(request, 200, {"invalidated": n})

    # -- errors ------------------------------------------------------------

    @app.handle_errors(*DOMAIN_ERRORS)
    def _domain_error(self, request: IRequest, failure: Failure) -> bytes:
        """
        Answer a domain exception (a rejected request, an unreachable
        store, an upstream failure) with its JSON error.
        """
        error = api_error(failure.value)  # type: ignore[arg-type]
        assert error is not None
        e = failure.value
        if isinstance(e, UpstreamError) and error.status in (502, 504):
            # (v3) a route's upstream failure says what failed, as a miss
            # whose forward failed (RFC 9211)
            member = b"apicache; fwd=uri-miss; detail=%s" % e.detail.encode("ascii")
            if e.status is not None:
                member += b"; fwd-status=%d" % e.status
            request.cache = "MISS"  # type: ignore[attr-defined]
            request.setHeader(b"x-cache", b"MISS")
            request.setHeader(b"cache-status", member)
        return refuse(request, error)

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return refuse(request, ApiError(404, "no_route", "no route matches this path"))

    @app.handle_errors(MethodNotAllowed)
    def _not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        valid = getattr(failure.value, "valid_methods", None)
        if valid and not request.responseHeaders.hasHeader(b"allow"):
            order = ["GET", "HEAD", "DELETE"]
            methods = sorted(valid, key=lambda m: (order.index(m) if m in order else len(order), m))
            request.setHeader(b"allow", ", ".join(methods).encode("ascii"))
        return refuse(
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
        return error_body("internal_error", "an unexpected error occurred", id=error_id)


def _ratio(hits: int, misses: int) -> float:
    """
    Return hits over hits and misses, 0.0 before any.
    """
    return hits / (hits + misses) if hits + misses else 0.0


def _traceparent(request: ApiRequest) -> bytes | None:
    """
    Return the ``traceparent`` of ``request``'s span, sent upstream in place
    of the caller's, or ``None`` for a request without a trace.
    """
    trace = getattr(request, "trace", None)
    return None if trace is None else trace.traceparent()  # type: ignore[no-any-return]
