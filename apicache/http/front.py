"""
The front resource (L{ApiFront}): the checks made before routing, the fast
hit path that answers a fresh hit before Klein's dispatch, and the hand-off
of everything else to the Klein application (L{apicache.http.api}).
"""

from __future__ import annotations

import re
from typing import Any, cast
from urllib.parse import unquote_to_bytes as unquote

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from apicache.auth.apikey import ApiKeys
from apicache.auth.tokens import Claims, TokenRefused, TokenVerifier
from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import RESERVED_PATHS
from apicache.cache.tenant import CacheResult
from apicache.http.channel import ApiRequest, check_head, check_token
from apicache.http.errors import DOMAIN_ERRORS, ApiError, api_error, invalid_token
from apicache.http.resolve import Resolved, Resolver
from apicache.http.writers import refuse, write_result

__all__ = ["ApiFront"]


class ApiFront(Resource):
    """
    The root resource: checks what must be checked before routing, answers
    a fresh hit at once (L{answer_hit}), and hands everything else to the
    Klein application.

    @ivar keys: the api-keys it checks (the fast path checks them too,
        L{apicache.http.fast}).
    @ivar verifier: the verifier of bearer tokens it checks with, or
        ``None``.
    """

    isLeaf = True

    def __init__(
        self,
        inner: IResource,
        resolver: Resolver,
        keys: ApiKeys,
        registry: CacheRegistry,
        verifier: TokenVerifier | None = None,
    ) -> None:
        super().__init__()
        self._inner = inner
        self._resolver = resolver
        self._keys = self.keys = keys
        self._registry = registry
        self._verifier = self.verifier = verifier
        self._tenant_header = resolver.tenant_header
        #: the request headers part of the key (lower case)
        self.keyed_headers = resolver.keyed_headers

    def render(self, request: IRequest) -> Any:
        """
        Answer ``request``: an error for a duplicate header, a wrong key, a
        refused bearer token or an undecodable path, a hit, or whatever the
        Klein application says.
        """
        # the channel checked these before reading the body, with the same
        # keys and verifier in production; again here for requests that
        # come another way (tests over StubTreq, a site given other keys or none)
        if not getattr(request, "head_checked", False) or (
            request.channel.site.keys is not self._keys  # type: ignore[attr-defined]
            or request.channel.site.verifier is not self._verifier  # type: ignore[attr-defined]
        ):
            error = check_head(self._keys, self._tenant_header, request.path, request.requestHeaders)
            if error is not None:
                return refuse(request, error)
            try:
                verified = check_token(self._verifier, self._tenant_header, request.path, request.requestHeaders)
            except TokenRefused as refused:
                return refuse(request, invalid_token(refused))
            if isinstance(verified, Deferred):
                verified.addBoth(self._render_verified, request)
                return NOT_DONE_YET
            request.token_claims = verified  # type: ignore[attr-defined]
        return self._render_checked(request)

    def _render_verified(self, result: Claims | Failure, request: IRequest) -> None:
        """
        Go on with a request whose token waited for the key set.
        """
        if isinstance(result, Failure):
            error = api_error(cast(BaseException, result.value))
            if error is None:
                result.raiseException()
            body = refuse(request, cast(ApiError, error))
        else:
            request.token_claims = result  # type: ignore[attr-defined]
            body = self._render_checked(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _render_checked(self, request: IRequest) -> Any:
        """
        Answer a request past the checks made before routing.
        """
        if request.method == b"GET" or request.method == b"HEAD":
            # any twisted.web Request takes the attributes ApiRequest declares
            body = self.answer_hit(cast(ApiRequest, request))
            if body is not None:
                return body
        if not _klein_path(request.path):
            # Klein would answer a plain-text 400 of its own (and log a
            # traceback), or no route for a control character its rules
            # can't match: answer the JSON error a route gives instead
            return refuse(request, self._undecodable(request.path))
        return self._inner.render(request)

    def answer_hit(self, request: ApiRequest) -> Any:
        """
        The hit path: answer a GET or HEAD whose fresh answer is held in this
        process, at once, before Klein's dispatch.  Creates no Deferred and
        no coroutine.

        @return: C{NOT_DONE_YET} once answered, or ``None`` to leave the
            request to Klein (a miss, a stale entry, a reserved path, or a
            check that fails: the route resolves it again and answers the
            error through the Klein error handlers).
        """
        resolved = self.resolve_hit(request)
        if resolved is None:
            return None
        result = self.hit(resolved, request.requestHeaders)
        if result is None:
            return None
        return write_result(request, result)

    def resolve_hit(self, request: ApiRequest) -> Resolved | None:
        """
        Resolve a GET or HEAD on its route for L{hit} (setting the
        request's C{route_type} and C{tenant}), or return ``None`` for a
        reserved path or a request the route would refuse (Klein's path
        answers the error).
        """
        if request.path in RESERVED_PATHS:
            return None
        try:
            return self._resolver.resolve(request)
        except DOMAIN_ERRORS:
            return None

    def hit(self, resolved: Resolved, headers: Headers) -> CacheResult | None:
        """
        Return the fresh answer held in this process for ``resolved`` (the
        variant ``headers`` select), or ``None``.
        """
        return self._registry.cache(resolved.tenant, resolved.route.type).hit(resolved.key, headers, resolved.encoding)

    def _undecodable(self, path: bytes) -> ApiError:
        """
        Return the error for a path Klein can't route (not UTF-8 once
        decoded, or holding an encoded control character): the route's
        error (``invalid_parameter`` for a parameter), else ``no_route``.
        """
        try:
            self._resolver.match(path)
        except DOMAIN_ERRORS as e:
            return cast(ApiError, api_error(e))
        return ApiError(400, "invalid_parameter", "the path is not UTF-8 once decoded")


_ENCODED_CONTROL = re.compile(rb"%(?:[01][0-9A-Fa-f]|7[Ff])")


def _klein_path(path: bytes) -> bool:
    """
    Return whether Klein can route ``path``: UTF-8 once percent-decoded,
    without a control character (werkzeug's rules match none).
    """
    if path.isascii() and b"%" not in path:
        return True
    if _ENCODED_CONTROL.search(path):
        return False
    try:
        unquote(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
