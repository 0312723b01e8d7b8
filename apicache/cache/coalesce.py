"""
Coalescing: concurrent misses for one key share one upstream fetch, and an
invalidation that arrives while a fetch is in flight detaches it (the race
rule): the callers already waiting still get its answer, a caller arriving
after the invalidation starts a new fetch.

What a fetch yields is the tenant cache's business (L{apicache.cache.tenant});
this module only shares it between waiters.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from apicache.cache.keys import CacheKey

__all__ = ["Flight", "Flights"]

T = TypeVar("T")


class Flight(Generic[T]):
    """
    One upstream fetch in flight and the callers waiting for it.  Callers
    wait on Deferreds of their own, so cancelling one (a disconnect) never
    cancels the fetch.
    """

    __slots__ = ("waiters", "result", "launched")

    def __init__(self, launched: int = 0) -> None:
        self.waiters: list[Deferred[T]] = []
        self.result: T | Failure | None = None
        #: L{Flights.tag_purges} when it started
        self.launched = launched

    def wait(self) -> Deferred[T]:
        # a fetch can end synchronously (Overloaded, a synchronous store):
        # a caller arriving after that still gets its result
        if self.result is not None:
            return fail(self.result) if isinstance(self.result, Failure) else succeed(self.result)
        d: Deferred[T] = Deferred(self.waiters.remove)
        self.waiters.append(d)
        return d

    def settle(self, result: T | Failure) -> None:
        self.result = result
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class Flights(Generic[T]):
    """
    The coalescing table, shared by every tenant cache, indexed by resource
    so that an invalidation finds the fetches it must detach.
    """

    def __init__(self) -> None:
        self.by_key: dict[CacheKey, Flight[T]] = {}
        self._by_resource: dict[tuple[str, tuple[str, ...]], set[CacheKey]] = {}
        #: (tenant, route) -> fetches in flight, for L{busy}
        self._per_cache: dict[tuple[str, str], int] = {}
        #: tag purges so far, and the count at each tenant's (None: every
        #: tenant's) latest one: a fetch started before a tag purge of its
        #: tenant may carry that tag, so nobody arriving after joins it
        self.tag_purges = 0
        self._tag_purged_at: dict[str | None, int] = {}

    def add(self, key: CacheKey, flight: Flight[T]) -> None:
        if key not in self.by_key:
            owner = (key.tenant, key.route)
            self._per_cache[owner] = self._per_cache.get(owner, 0) + 1
        self.by_key[key] = flight
        self._by_resource.setdefault((key.route, key.params), set()).add(key)

    def remove(self, key: CacheKey, flight: Flight[T]) -> None:
        if self.by_key.get(key) is flight:
            self._drop(key)

    def _drop(self, key: CacheKey) -> None:
        del self.by_key[key]
        owner = (key.tenant, key.route)
        left = self._per_cache[owner] - 1
        if left:
            self._per_cache[owner] = left
        else:
            del self._per_cache[owner]
        keys = self._by_resource[(key.route, key.params)]
        keys.discard(key)
        if not keys:
            del self._by_resource[(key.route, key.params)]

    def detach(self, tenant: str | None, route: str, params: tuple[str, ...]) -> None:
        """
        Forget the fetches for a resource: later callers start new ones.
        """
        for key in list(self._by_resource.get((route, params), ())):
            if tenant is None or key.tenant == tenant:
                self._drop(key)

    def detach_tenant(self, tenant: str | None) -> None:
        """
        Forget every fetch (of ``tenant``).
        """
        for key in list(self.by_key):
            if tenant is None or key.tenant == tenant:
                self._drop(key)

    def tag_purged(self, tenant: str | None) -> None:
        """
        Note a tag purge of ``tenant`` (or every tenant): fetches running now
        are joined by nobody else (which tags they carry is known only once
        they are answered; the store refuses to keep the purged ones).
        """
        self.tag_purges += 1
        self._tag_purged_at[tenant] = self.tag_purges
        if len(self._tag_purged_at) > 65536:
            # forgetting tenants' marks: fold them into the every-tenant one
            self._tag_purged_at = {None: self.tag_purges}

    def joinable(self, key: CacheKey, flight: Flight[T]) -> bool:
        """
        Return whether a caller arriving now may wait for ``flight``: no tag
        purge of its tenant came after it started.
        """
        if not self._tag_purged_at:
            return True
        at = self._tag_purged_at
        return flight.launched >= at.get(key.tenant, 0) and flight.launched >= at.get(None, 0)

    def busy(self, tenant: str, route: str) -> bool:
        """
        Return whether (``tenant``, ``route``) has a fetch in flight.
        """
        return (tenant, route) in self._per_cache
