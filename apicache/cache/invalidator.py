"""
The invalidation seam: what the HTTP API and the event handler call to drop
or mark stale cached entries, without knowing whether one process holds them
(the cache registry) or several (the worker relay, L{apicache.daemon.workers}).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from zope.interface import Interface

__all__ = ["IInvalidator"]


class IInvalidator(Interface):
    """
    Drops or marks stale the entries of a resource, a tenant or everything.

    Each call fires with the number of entries it touched, and errbacks with
    L{apicache.store.interface.StoreUnavailable} when the entries could not
    be reached: never a count of entries that were not touched.
    """

    def invalidate(tenant: str | None, route_type: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Drop every variant (query, headers) of the resource ``params`` of
        ``route_type``, for ``tenant`` or, when ``None``, every tenant.

        @return: fires with the number of entries dropped.
        """

    def refresh(tenant: str | None, route_type: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Mark every variant of a resource stale, for ``tenant`` or every
        tenant: served stale once while one background re-fetch runs.

        @return: fires with the number of entries marked.
        """

    def clear(tenant: str | None) -> Deferred[int]:
        """
        Drop every entry of ``tenant``, or every entry when ``None``.

        @return: fires with the number of entries dropped.
        """

    def invalidate_tags(tenant: str | None, tags: Sequence[str], source: str = "") -> Deferred[int]:
        """
        Drop every entry carrying one of ``tags``, of ``tenant`` or, when
        ``None``, of every tenant (SPEC.md section 3, "Tags").

        @param source: where the purge comes from (``http``, ``event``,
            ``write``), for metrics; empty when relayed.
        @return: fires with the number of entries dropped.
        """

    def refresh_tags(tenant: str | None, tags: Sequence[str], source: str = "") -> Deferred[int]:
        """
        Mark stale every entry carrying one of ``tags``, of ``tenant`` or of
        every tenant.

        @return: fires with the number of entries marked.
        """
