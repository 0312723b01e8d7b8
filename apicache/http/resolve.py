"""
Resolving a request on a route: which route, its decoded path parameters,
the tenant, the canonical query and the cache key, with the tenant claim
checked.  The one place that does it, for the fast hit path
(L{apicache.http.channel}) and the Klein route (L{apicache.http.api}) alike.

Resolution is a pure function of the request's URI and a few header
values, so its answers are remembered in bounded memos: a request seen
before is neither matched, decoded nor canonicalized again (this is most
of what keeps the hit path fast).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.web.iweb import IRequest

from apicache._twisted import raw_headers
from apicache.auth.apikey import claim_matches
from apicache.auth.tokens import claim_text
from apicache.cache.keys import CacheKey, InvalidTenant, cache_key, canonical_query, validate_tenant
from apicache.cache.policy import normalise_accept_encoding
from apicache.cache.routes import Route, Router
from apicache.cache.wire import canonical_name
from apicache.config import Config
from apicache.http.errors import ApiError

__all__ = ["Resolved", "Resolver", "MEMO_SIZE", "MEMO_REQUEST_BYTES"]

#: How many resolved requests and valid tenant names are remembered (then
#: forgotten at once).
MEMO_SIZE = 8192
#: Requests longer than this (URI and keyed header values) are not remembered.
MEMO_REQUEST_BYTES = 512


#: The hit path reads twisted.web's table of raw headers directly, with
#: names worked out once (L{canonical_name}): C{getRawHeaders} encodes the
#: name again on every call.
_RAW_ACCEPT_ENCODING = canonical_name(b"accept-encoding")


class Resolved:
    """
    A request resolved on a route.

    @ivar route: the matched route.
    @ivar params: its decoded path parameters, in the route's order.
    @ivar tenant: the tenant (valid, interned).
    @ivar query: the canonical query string (``""`` without one).
    @ivar key: the cache key.
    @ivar encoding: the normalised ``Accept-Encoding`` (``gzip`` or
        ``identity``), sent upstream; (v3) it selects among the key's
        variants instead of keying (L{apicache.cache.variants}).
    """

    __slots__ = ("route", "params", "tenant", "query", "key", "encoding")

    def __init__(
        self,
        route: Route,
        params: tuple[str, ...],
        tenant: str,
        query: str,
        key: CacheKey,
        encoding: bytes = b"identity",
    ) -> None:
        self.route = route
        self.params = params
        self.tenant = tenant
        self.query = query
        self.key = key
        self.encoding = encoding


class Resolver:
    """
    Resolves requests on the configured routes.
    """

    def __init__(self, config: Config, router: Router) -> None:
        self.router = router
        self.tenant_header = config.server.tenant_header.encode("ascii")
        self._raw_tenant_header = canonical_name(self.tenant_header)
        self._tenant_claim = config.server.tenant_claim
        # with [auth], the claim is read from the verified token only
        self._verified_claims = config.auth.enabled
        #: the request headers part of the key (lower case)
        self.keyed_headers = tuple(h.encode("ascii") for h in config.upstream.keyed_headers)
        self._raw_keyed = [canonical_name(h) for h in self.keyed_headers]
        self._tenants: dict[bytes, str] = {}
        self._resolved: dict[tuple[Any, ...], Resolved] = {}

    def match(self, path: bytes) -> tuple[Route, tuple[str, ...]]:
        """
        Return the route matching the raw request ``path`` and its decoded
        parameters.

        @raise ApiError: ``no_route``.
        @raise InvalidParameter: a parameter is rejected, or the path is not
            UTF-8 once decoded.
        """
        found = self.router.resolve(path)
        if found is None:
            raise ApiError(404, "no_route", "no route matches this path")
        return found

    def tenant(self, request: IRequest, required: bool) -> str | None:
        """
        Return the request's tenant, or ``None`` when it has none and none
        is ``required``.

        @raise ApiError: ``missing_tenant``.
        @raise InvalidTenant: the value is not a tenant name.
        """
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
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidTenant("the tenant may only hold A-Z a-z 0-9 . _ : -") from None
        tenant = sys.intern(validate_tenant(text))
        # valid names only, remembered so that the hit path neither decodes
        # nor matches again and every key of a tenant shares one string
        if len(self._tenants) >= MEMO_SIZE:
            self._tenants.clear()
        self._tenants[raw] = tenant
        return tenant

    def claimed_tenant(self, request: Any, required: bool) -> str | None:
        """
        Return the request's tenant as L{tenant} does, checked against the
        bearer token's C{tenant_claim} (L{check_claim}).  For the requests
        L{resolve} does not see: purges, tag purges and C{/clear}.

        @raise ApiError: ``missing_tenant`` or ``tenant_mismatch``.
        @raise InvalidTenant: the tenant header is not a tenant name.
        """
        tenant = self.tenant(request, required)
        if tenant is not None:
            self.check_claim(request, tenant)
        return tenant

    def check_claim(self, request: Any, tenant: str) -> None:
        """
        Check C{server.tenant_claim}, when set, on a request naming
        C{tenant} (SPEC.md section 4, every method): with C{[auth]}, the
        claim of the token the channel verified; without it, of the
        unverified token (a consistency check, not a proof).

        @raise ApiError: ``403 tenant_mismatch``.
        """
        claim = self._tenant_claim
        if not claim:
            return
        if self._verified_claims:
            claims = getattr(request, "token_claims", None)
            # no verified claims: the token was never checked, so nothing
            # vouches for the tenant.  A plain comparison: both sides are
            # the caller's own (its header, its token), no secret to time.
            ok = claims is not None and claim_text(claims, claim) == tenant
        else:
            ok = claim_matches(request.requestHeaders.getRawHeaders(b"authorization"), claim, tenant)
        if not ok:
            raise ApiError(403, "tenant_mismatch", f"the token's {claim!r} claim does not match the tenant")

    def resolve(self, request: Any) -> Resolved:
        """
        Resolve a ``GET`` (or ``HEAD``) on a route.  Sets the request's
        ``route_type`` and ``tenant`` (for the access log) as they become
        known.

        @return: the L{Resolved} request (remembered: treat it as read-only).
        @raise ApiError: ``no_route``, ``missing_tenant`` or
            ``tenant_mismatch``.
        @raise InvalidParameter: a path parameter is rejected.
        @raise InvalidTenant: the tenant header is not a tenant name.
        @raise InvalidQuery: the query string is rejected.
        """
        headers = request.requestHeaders
        raw = raw_headers(headers)
        tenants = raw.get(self._raw_tenant_header) or None
        keyed = [raw.get(h) or None for h in self._raw_keyed]
        accept_encoding = raw.get(_RAW_ACCEPT_ENCODING) or None
        seen = (
            request.uri,
            tenants[0] if tenants else None,
            tuple([tuple(v) if v else None for v in keyed]) if any(keyed) else (),
            tuple(accept_encoding) if accept_encoding else None,
        )
        found = self._resolved.get(seen)
        if found is None:
            route, params = self.match(request.path)
            request.route_type = route.type
            tenant = self.tenant(request, required=True)
            assert tenant is not None
            request.tenant = tenant
            raw_query = request.uri.partition(b"?")[2]
            query = canonical_query(raw_query) if raw_query else ""
            encoding = normalise_accept_encoding(accept_encoding)
            key = cache_key(tenant, route.config, params, query, keyed)
            found = Resolved(route, params, tenant, query, key, encoding)
            # only short requests are remembered: the memo's size stays a
            # small fixed overhead whatever callers send
            size = len(request.uri) + sum([len(v) for vs in keyed if vs for v in vs])
            if accept_encoding:
                size += sum([len(v) for v in accept_encoding])
            if size <= MEMO_REQUEST_BYTES:
                if len(self._resolved) >= MEMO_SIZE:
                    self._resolved.clear()
                self._resolved[seen] = found
        else:
            request.route_type = found.route.type
            request.tenant = found.tenant
        if self._tenant_claim:
            self.check_claim(request, found.tenant)
        return found
