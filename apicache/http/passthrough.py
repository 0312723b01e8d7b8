"""
Pass-through writes (SPEC.md section 4): a ``POST``, ``PUT``, ``PATCH`` or
``DELETE`` on a route whose ``pass_methods`` holds it is forwarded to the
upstream with its body, and the answer is passed through, never stored.

A write the upstream may have applied invalidates what the tenant holds of
that resource (RFC 9111 section 4.4): a 2xx, 3xx, 404 or 410 answer, or
an answer lost after the request was sent.  Writes are neither coalesced
nor retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from apicache.cache.invalidator import IInvalidator
from apicache.cache.policy import hidden_headers, replayed_headers, upstream_age
from apicache.cache.tags import InvalidTag
from apicache.cache.tags import route_tags as entry_tags
from apicache.cache.tenant import MISS, CacheResult
from apicache.cache.wire import date_header
from apicache.config import Config, RouteConfig
from apicache.http.errors import ApiError
from apicache.store.interface import CachedResponse, StoreUnavailable
from apicache.upstream.client import IUpstream, UpstreamError, UpstreamResponse

__all__ = [
    "PassThrough",
    "WRITE_HEADERS",
    "CACHE_STATUS",
    "invalidates",
    "route_tags",
]

#: The caller's headers a write forwards whatever ``forward_headers`` says.
WRITE_HEADERS = (b"content-type", b"if-match", b"if-unmodified-since", b"if-none-match")

#: apicache's ``Cache-Status`` member on a pass-through write (RFC 9211).
CACHE_STATUS = b"apicache;fwd=method"


def invalidates(status: int) -> bool:
    """
    Return whether a write answered ``status`` invalidates the resource
    (RFC 9111 section 4.4: a non-error status; SPEC.md adds 404 and 410).
    """
    return 200 <= status < 400 or status in (404, 410)


def route_tags(route: RouteConfig, params: Sequence[str]) -> list[str]:
    """
    Return the tags a write to the resource ``params`` of ``route`` purges:
    the tags its entries carry (L{apicache.cache.tags.route_tags}), or none when
    a filled template is not a tag (then no entry can carry it: such
    answers are not stored).
    """
    try:
        return list(entry_tags(route, params))
    except InvalidTag:
        return []


class PassThrough:
    """
    Forwards writes to the upstream and invalidates what they may have
    changed.
    """

    log = Logger()

    def __init__(self, config: Config, upstream: IUpstream, clock: IReactorTime) -> None:
        self._upstream = upstream
        self._clock = clock
        self.max_body_bytes = config.server.max_body_bytes
        # hidden as on a GET: hide_headers and the tags header
        self._hidden = hidden_headers(config.upstream)

    def body(self, request: Any) -> bytes:
        """
        Return ``request``'s body, read (by twisted.web, after the checks
        made before routing) into ``request.content``.

        @raise ApiError: ``413 body_too_large`` past ``server.max_body_bytes``,
            whether declared or chunked.
        """
        content = getattr(request, "content", None)
        if content is None:
            return b""
        content.seek(0)
        body: bytes = content.read(self.max_body_bytes + 1)
        if len(body) > self.max_body_bytes:
            raise ApiError(413, "body_too_large", f"the request body is over {self.max_body_bytes} bytes")
        return body

    async def forward(
        self,
        method: bytes,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        tenant: str,
        route: RouteConfig,
        params: tuple[str, ...],
        invalidator: IInvalidator,
    ) -> CacheResult:
        """
        Send the write upstream and invalidate the tenant's entries of the
        resource (and its route's tags) when it may have been applied.

        @param path: the encoded upstream path, query included.
        @return: the answer to pass through (``MISS``, never stored).
        @raise UpstreamError: no answer; the resource was invalidated if the
            request may have been sent.
        """
        try:
            response: UpstreamResponse = await self._upstream.fetch(
                path, headers, tenant=tenant, method=method, body=body
            )
        except UpstreamError as e:
            if e.sent:
                await self._after_write(invalidator, tenant, route, params)
            raise
        if invalidates(response.status):
            await self._after_write(invalidator, tenant, route, params)
        # the headers, Date and Age of a MISS: the upstream's Date is passed
        # on (apicache's own when it sent none), a non-zero upstream Age by
        # its first value; never stored, so Set-Cookie is passed on (a login
        # keeps its cookie)
        kept = replayed_headers(response.headers, self._hidden, date_header(self._clock.seconds()), passed=True)
        age = upstream_age(response.headers) or None
        answer = CachedResponse(response.status, kept, response.body)
        # the writer appends apicache's member after any the upstream sent
        return CacheResult(MISS, answer, age, member=CACHE_STATUS, stored=False)

    async def _after_write(
        self, invalidator: IInvalidator, tenant: str, route: RouteConfig, params: tuple[str, ...]
    ) -> None:
        try:
            await invalidator.invalidate(tenant, route.type, params)
            await self.purge_tags(invalidator, tenant, route_tags(route, params))
        except StoreUnavailable as e:
            # the upstream applied the write: its answer still reaches the
            # caller, and the failure is logged (never a silent stale entry)
            self.log.warn(
                "a write to {route} could not invalidate the cache: {error}", route=route.type, error=str(e)
            )

    def purge_tags(self, invalidator: IInvalidator, tenant: str, tags: list[str]) -> Deferred[int]:
        """
        Drop the tenant's entries, of every route, carrying the write's
        route ``tags`` (SPEC.md section 4), counted as ``write`` purges.

        @return: fires with the number of entries dropped; errbacks with
            L{StoreUnavailable}.
        """
        if not tags:
            return succeed(0)
        return invalidator.invalidate_tags(tenant, tags, "write")
