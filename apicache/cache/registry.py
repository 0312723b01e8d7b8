"""
The registry of tenant caches (L{CacheRegistry}, an L{IInvalidator}): one
L{TenantCache} per (tenant, route type), created on first use and reclaimed
when too many are held, and the target of every invalidation, refresh,
clear and tag purge, from the HTTP API, events and pass-through writes.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from apicache.cache.coalesce import Flights
from apicache.cache.invalidator import IInvalidator
from apicache.cache.policy import hidden_headers, varying_headers
from apicache.cache.tenant import Outcome, TenantCache
from apicache.config import RouteConfig, UpstreamConfig
from apicache.ops.metrics import LatencyHistogram
from apicache.store.interface import IStore, StoreUnavailable
from apicache.upstream.client import IUpstream

if TYPE_CHECKING:
    # the wiring passes the event watermark in; only its type is named here,
    # so that the cache core imports nothing of the event listener
    from apicache.events.watermark import Watermark

__all__ = ["CacheRegistry", "TAG_PURGE_BUCKETS"]

#: Buckets of the entries-per-tag-purge histogram.
TAG_PURGE_BUCKETS = (0, 1, 10, 100, 1000, 10000, 100000)


@implementer(IInvalidator)
class CacheRegistry:
    """
    Every tenant cache, created on first use, at most ``max_tenants`` at
    once: past that the least recently used idle one is reclaimed (a busy
    one only if none is idle).  Reclaiming frees the object, never the
    tenant's entries: a later request makes a new object over them.

    The HTTP layer and the event listener call :meth:`invalidate`,
    :meth:`refresh`, :meth:`clear`, :meth:`invalidate_tags` and
    :meth:`refresh_tags`.

    @ivar tag_purges: tag purges made, by source (``http``, ``event``,
        ``write``); relayed ones (no source) are counted where they began.
    @ivar tag_dropped: entries dropped (or marked) per tag purge.
    """

    log = Logger()

    def __init__(
        self,
        store: IStore,
        upstream: IUpstream,
        clock: IReactorTime,
        routes: Iterable[RouteConfig],
        keyed_headers: Sequence[str],
        max_tenants: int = 10000,
        upstream_config: UpstreamConfig | None = None,
        watermark: Watermark | None = None,
        tags_header: str | None = None,
    ) -> None:
        """
        @param watermark: the event watermark, for routes with
            ``max_staleness`` (bounded staleness, SPEC.md section 5).
        """
        self.store = store
        self.upstream = upstream
        self._clock = clock
        self.routes = {r.type: r for r in routes}
        self._keyed = tuple(keyed_headers)
        up = upstream_config or UpstreamConfig()
        if tags_header is not None and tags_header != up.tags_header:
            # the tags header is also hidden from callers (hidden_headers)
            up = dataclasses.replace(up, tags_header=tags_header)
        self._varying = varying_headers(up)
        self._hidden = hidden_headers(up)
        self.max_tenants = max_tenants
        self.watermark = watermark
        self.tags_header = up.tags_header
        self._targets = up.targeted_cache_control
        self.tag_purges: dict[str, int] = {"http": 0, "event": 0, "write": 0}
        self.tag_dropped = LatencyHistogram(TAG_PURGE_BUCKETS)
        self._caches: OrderedDict[tuple[str, str], TenantCache] = OrderedDict()
        self._flights: Flights[Outcome] = Flights()
        # a shared store tells of other instances' tag purges: nobody here
        # joins a fetch that began before one (the race rule across instances)
        listeners = getattr(store, "tag_purge_listeners", None)
        if listeners is not None:
            listeners.append(self._flights.tag_purged)
        #: plain counters, read at scrape time
        self.counters: dict[str, int] = {
            "coalesced": 0,
            "fetches": 0,
            "store_errors": 0,
            "reclaimed": 0,
            "events_behind": 0,
        }

    def cache(self, tenant: str, route_type: str) -> TenantCache:
        """
        Return the cache for (``tenant``, ``route_type``), creating it.

        @raise KeyError: no route has that type.
        """
        k = (tenant, route_type)
        c = self._caches.get(k)
        if c is not None:
            self._caches.move_to_end(k)
            return c
        c = TenantCache(
            tenant,
            self.routes[route_type],
            self.store,
            self.upstream,
            self._clock,
            self._keyed,
            self._flights,
            self.counters,
            self._varying,
            self._hidden,
            watermark=self.watermark,
            tags_header=self.tags_header,
            targets=self._targets,
        )
        self._caches[k] = c
        if len(self._caches) > self.max_tenants:
            self._reclaim()
        return c

    def _reclaim(self) -> None:
        victim = next((k for k, c in self._caches.items() if c.idle), None)
        if victim is None:
            victim = next(iter(self._caches))
        # Only the TenantCache object goes: its entries stay in the store
        # (SPEC.md section 2, max_tenants), since anyone with an api-key can
        # name new tenants, and dropping the entries of the one reclaimed
        # would let them empty other tenants' caches.  The store's own
        # budget and fair share bound what the entries hold.
        del self._caches[victim]
        self.counters["reclaimed"] += 1

    def __len__(self) -> int:
        return len(self._caches)

    def tenants(self) -> int:
        """
        Return how many distinct tenants hold a cache now.
        """
        return len({t for t, _ in self._caches})

    def invalidate(self, tenant: str | None, route_type: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Drop every variant of a resource, for ``tenant`` or every tenant.
        Fires with the number of entries dropped; errbacks with
        L{StoreUnavailable}.
        """
        self._flights.detach(tenant, route_type, params)
        return self._call(self.store.invalidate, tenant, route_type, params)

    def refresh(self, tenant: str | None, route_type: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Mark every variant of a resource stale, for ``tenant`` or every
        tenant.  Fires with the number marked; errbacks with
        L{StoreUnavailable}.
        """
        self._flights.detach(tenant, route_type, params)
        return self._call(self.store.mark_stale, tenant, route_type, params)

    def clear(self, tenant: str | None) -> Deferred[int]:
        """
        Drop every entry (of ``tenant``).  Fires with the number dropped;
        errbacks with L{StoreUnavailable}.
        """
        self._flights.detach_tenant(tenant)

        def release(n: int) -> int:
            # their entries are gone: idle caches of those tenants go too
            for k in [k for k, c in self._caches.items() if (tenant is None or k[0] == tenant) and c.idle]:
                del self._caches[k]
            return n

        return self._call(self.store.clear, tenant).addCallback(release)

    def invalidate_tags(self, tenant: str | None, tags: Sequence[str], source: str = "") -> Deferred[int]:
        """
        Drop every entry carrying one of ``tags``, of ``tenant`` or of every
        tenant: at once for every later request, and fetches in flight don't
        store answers carrying them.  The target of the pass-through write
        hook (``source="write"``), of ``DELETE /tags/<tag>`` and of events.
        Fires with the number of entries dropped; errbacks with
        L{StoreUnavailable}.

        @param source: ``http``, ``event`` or ``write``, for metrics; empty
            for a purge relayed from another worker (counted there).
        """
        return self._purge_tags(tenant, tags, False, source)

    def refresh_tags(self, tenant: str | None, tags: Sequence[str], source: str = "") -> Deferred[int]:
        """
        Mark stale every entry carrying one of ``tags``, of ``tenant`` or of
        every tenant (see L{invalidate_tags}).  Fires with the number marked;
        errbacks with L{StoreUnavailable}.
        """
        return self._purge_tags(tenant, tags, True, source)

    def _purge_tags(self, tenant: str | None, tags: Sequence[str], stale: bool, source: str) -> Deferred[int]:
        self._flights.tag_purged(tenant)
        # every tag's purge starts now (each takes effect locally at once),
        # then they are waited for together
        started = [self._call(self.store.purge_tag, tenant, tag, stale) for tag in tags]

        async def total() -> int:
            n = 0
            error: Failure | None = None
            for d in started:
                try:
                    n += await d
                except StoreUnavailable:
                    error = error or Failure()
            if error is not None:
                error.raiseException()
            if source:
                self.tag_purges[source] = self.tag_purges.get(source, 0) + 1
                self.tag_dropped.observe(n)
            return n

        return Deferred.fromCoroutine(total())

    @staticmethod
    def _call(f: Any, *args: Any) -> Deferred[int]:
        try:
            return f(*args)  # type: ignore[no-any-return]
        except StoreUnavailable:
            return fail()
