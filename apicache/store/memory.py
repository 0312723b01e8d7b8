"""
The in-process store: a least-recently-used map bounded in bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from apicache.keys import CacheKey
from apicache.store.interface import ENTRY_OVERHEAD, CachedResponse, IStore
from apicache.store.tagindex import DROPPED, FRESH, TagIndex

__all__ = ["MemoryStore"]

#: How many invalidated resources are remembered for the race rule; a fetch
#: older than the oldest one forgotten is conservatively not stored.
_CHANGES_KEPT = 65536


@implementer(IStore)
class MemoryStore:
    """
    Entries in this process, least recently used evicted first.

    The budget counts each entry's body, stored headers, key and a fixed
    :data:`ENTRY_OVERHEAD`; the total never exceeds ``max_bytes``.  An answer
    (body and stored headers) bigger than ``max_entry_bytes`` is not stored.
    Tagged entries are also in a L{TagIndex}, whose memory counts in the
    budget too.

    @param clock: spreads the freeing of a tag purge's entries over reactor
        turns; without one they are freed at once.
    """

    shared = False

    def __init__(self, max_bytes: int, max_entry_bytes: int | None = None, clock: IReactorTime | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes if max_entry_bytes is None else min(max_entry_bytes, max_bytes)
        self._entries: OrderedDict[CacheKey, CachedResponse] = OrderedDict()
        # tenant -> route -> params -> the key of the one variant, or a set
        # of them: an entry costs one slot here (a set only where a resource
        # has several variants), which counts in ENTRY_OVERHEAD.  Dropping
        # a resource for every tenant visits each tenant holding entries.
        self._index: dict[str, dict[str, dict[tuple[str, ...], CacheKey | set[CacheKey]]]] = {}
        self._per_tenant: dict[str, int] = {}
        self._bytes = 0
        self._evictions = 0
        # the race rule: a counter bumped by every change, and when each
        # resource (tenant None = every tenant) or tenant last changed
        self._epoch = 0
        self._changed: dict[Any, int] = {}
        self._forgotten_epoch = 0
        self.tags = TagIndex(clock)

    # -- reading -----------------------------------------------------------

    def lookup(self, key: CacheKey) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is not None:
            if entry.tags and self._tag_purged(key, entry):
                return None
            self._entries.move_to_end(key)
        return entry

    def _tag_purged(self, key: CacheKey, entry: CachedResponse) -> bool:
        """
        Apply the purges of ``entry``'s tags that came after it was stored:
        return whether it was dropped (it is then removed), after marking it
        stale if one of them was a refresh.
        """
        verdict = self.tags.check(key, entry.tags)
        if verdict == FRESH:
            return False
        if verdict == DROPPED:
            self._remove(key)
            return True
        if not entry.stale:
            entry.stale = True
            entry.retry_at = 0.0
        return False

    def load(self, key: CacheKey) -> Deferred[CachedResponse | None]:
        return succeed(self.lookup(key))

    # -- writing -----------------------------------------------------------

    def begin(self, key: CacheKey) -> Deferred[Any]:
        return succeed(self._epoch)

    def _changed_since(self, key: CacheKey, token: int) -> bool:
        if token < self._forgotten_epoch:
            return True
        get = self._changed.get
        return (
            get((key.tenant, key.route, key.params), 0) > token
            or get((None, key.route, key.params), 0) > token
            or get(("tenant", key.tenant), 0) > token
            or get("all", 0) > token
        )

    def _note_change(self, what: Any) -> None:
        self._epoch += 1
        self._changed.pop(what, None)
        self._changed[what] = self._epoch
        if len(self._changed) > _CHANGES_KEPT:
            oldest = next(iter(self._changed))
            self._forgotten_epoch = self._changed.pop(oldest)

    def put(self, key: CacheKey, entry: CachedResponse, token: Any) -> Deferred[bool]:
        return succeed(self.put_now(key, entry, token))

    def put_now(self, key: CacheKey, entry: CachedResponse, token: int) -> bool:
        """
        Like :meth:`put`, synchronously: return whether ``entry`` was stored.
        """
        if self._changed_since(key, token):
            return False
        if entry.tags and self.tags.refused(key.tenant, entry.tags, token):
            return False
        size = self._charge(key, entry)
        # the old entry goes even when the new answer is too big to keep:
        # it is no longer the upstream's answer
        self._remove(key)
        # SPEC.md section 2: the share of max_bytes limits the answer (body
        # and stored headers), not its bookkeeping; the budget still counts both
        if entry.size() > self.max_entry_bytes or size > self.max_bytes:
            return False
        while self._bytes + size > self.max_bytes and self._entries:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self._evictions += 1
        self._entries[key] = entry
        self._bytes += size
        if entry.tags:
            self.tags.add(key, entry.tags, token)
        self._per_tenant[key.tenant] = self._per_tenant.get(key.tenant, 0) + 1
        by_params = self._index.setdefault(key.tenant, {}).setdefault(key.route, {})
        held = by_params.get(key.params)
        if held is None:
            by_params[key.params] = key
        elif isinstance(held, set):
            held.add(key)
        else:
            by_params[key.params] = {held, key}
        return True

    def release(self, key: CacheKey, token: Any) -> None:
        # nobody outside this process waits for a fetch
        pass

    @staticmethod
    def _charge(key: CacheKey, entry: CachedResponse) -> int:
        return entry.size() + key.size() + ENTRY_OVERHEAD + TagIndex.charge(entry.tags)

    def _remove(self, key: CacheKey) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        if entry.tags:
            self.tags.remove(key, entry.tags)
        self._bytes -= self._charge(key, entry)
        left = self._per_tenant[key.tenant] - 1
        if left:
            self._per_tenant[key.tenant] = left
        else:
            del self._per_tenant[key.tenant]
        routes = self._index[key.tenant]
        by_params = routes[key.route]
        held = by_params[key.params]
        if isinstance(held, set):
            held.discard(key)
            if len(held) == 1:
                by_params[key.params] = held.pop()
            return True
        del by_params[key.params]
        if not by_params:
            del routes[key.route]
            if not routes:
                del self._index[key.tenant]
        return True

    def _variants(self, tenant: str | None, route: str, params: tuple[str, ...]) -> list[CacheKey]:
        """
        Return the keys of every variant of a resource, for ``tenant`` or
        every tenant.
        """
        tenants = self._index if tenant is None else {tenant: self._index.get(tenant, {})}
        keys: list[CacheKey] = []
        for routes in tenants.values():
            held = routes.get(route, {}).get(params)
            if held is None:
                continue
            if isinstance(held, set):
                keys.extend(held)
            else:
                keys.append(held)
        return keys

    @staticmethod
    def _all(by_params: Iterable[CacheKey | set[CacheKey]]) -> list[CacheKey]:
        keys: list[CacheKey] = []
        for held in by_params:
            if isinstance(held, set):
                keys.extend(held)
            else:
                keys.append(held)
        return keys

    def discard(self, key: CacheKey) -> Deferred[int]:
        return succeed(int(self._remove(key)))

    def invalidate(self, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        self._note_change((tenant, route, params))
        keys = self._variants(tenant, route, params)
        for k in keys:
            self._remove(k)
        return succeed(len(keys))

    def mark_stale(self, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        self._note_change((tenant, route, params))
        keys = self._variants(tenant, route, params)
        for k in keys:
            entry = self._entries[k]
            entry.stale = True
            entry.retry_at = 0.0
        return succeed(len(keys))

    def clear(self, tenant: str | None) -> Deferred[int]:
        if tenant is None:
            self._note_change("all")
            n = len(self._entries)
            self._entries.clear()
            self._index.clear()
            self._per_tenant.clear()
            self.tags.clear()
            self._bytes = 0
            return succeed(n)
        self._note_change(("tenant", tenant))
        keys = [k for by_params in self._index.get(tenant, {}).values() for k in self._all(by_params.values())]
        for k in keys:
            self._remove(k)
        return succeed(len(keys))

    def purge_tag(self, tenant: str | None, tag: str, stale: bool = False) -> Deferred[int]:
        """
        See L{IStore.purge_tag}: takes effect at once, and fires at once with
        the entries that carried the tag; their memory is freed in batches,
        one per reactor turn (L{TagIndex.purge}).
        """
        self._epoch += 1
        return succeed(self.tags.purge(tenant, tag, stale, self._epoch, self._reap_purged))

    def _reap_purged(self, key: CacheKey) -> None:
        entry = self._entries.get(key)
        # the key may hold a newer entry, stored after the purge
        if entry is not None and entry.tags and self.tags.check(key, entry.tags) == DROPPED:
            self._remove(key)

    def forget(self, tenant: str, route: str) -> None:
        for k in self._all(self._index.get(tenant, {}).get(route, {}).values()):
            self._remove(k)

    # -- health ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self._bytes, "evictions": self._evictions}

    def tag_stats(self) -> dict[str, int]:
        return self.tags.stats()

    def tenant_entries(self) -> dict[str, int]:
        """
        Return the entries held per tenant (read at metrics scrape time).
        """
        return dict(self._per_tenant)

    def is_ready(self) -> bool:
        return True
