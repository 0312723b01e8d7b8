"""
What apicache adds as an HTTP intermediary (RFC 9110 section 7.6), around
any L{IUpstream}: every upstream request carries ``Via: 1.1 apicache`` and
the configured ``set_headers``, which no caller value replaces
(L{apicache.upstream.requestheaders.FixedHeaders}); every
answer's ``Location``, ``Content-Location`` and ``Link`` URLs under
``base_url`` are rewritten to route paths (L{apicache.cache.links}) before the
cache or a pass-through write sees them, so stored, revalidated and
passed-through answers are rewritten alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from apicache.cache.links import LinkTargets, rewrite_links
from apicache.upstream.client import IUpstream, UpstreamResponse
from apicache.upstream.requestheaders import FixedHeaders

__all__ = ["IntermediaryUpstream"]


@implementer(IUpstream)
class IntermediaryUpstream:
    """
    An L{IUpstream} that adds ``Via`` and ``set_headers`` to each request
    and rewrites the links of each answer.

    @param set_headers: never logged (the values may be secrets).
    @param links: where links are rewritten to, or ``None`` to leave them.
    """

    def __init__(self, upstream: IUpstream, set_headers: Mapping[str, str], links: LinkTargets | None) -> None:
        self._upstream = upstream
        self._fixed = FixedHeaders(set_headers)
        self._links = links

    @property
    def in_flight(self) -> int:
        return self._upstream.in_flight  # type: ignore[no-any-return]

    def fetch(self, path: str, headers: Sequence[tuple[bytes, bytes]], **kwargs: Any) -> Deferred[UpstreamResponse]:
        """
        Like the wrapped upstream's ``fetch`` (``kwargs`` passed on), with
        ``set_headers`` and ``Via`` added and the answer's links rewritten.
        """
        d: Deferred[UpstreamResponse] = self._upstream.fetch(path, self._fixed.added_to(headers), **kwargs)
        if self._links is None:
            return d
        return d.addCallback(self._rewrite)

    def _rewrite(self, response: UpstreamResponse) -> UpstreamResponse:
        assert self._links is not None
        headers = rewrite_links(response.headers, self._links)
        if headers == list(response.headers):
            return response
        return UpstreamResponse(response.status, headers, response.body)

    def close(self) -> Deferred[None]:
        return self._upstream.close()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._upstream, name)
