"""
The in-process store: bounded in bytes, fair between clients and between
each client's tenants, and resistant to scans within a tenant (SPEC.md
section 3, "Fair share").
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from apicache.cache.keys import CacheKey, base_key, variant_key
from apicache.cache.variants import admit_variant
from apicache.cache.variants import touch_variant as _touched
from apicache.store.eviction import (
    ANONYMOUS,
    GHOST_SHARE,
    ClientShare,
    ExpiryWheel,
    Ghost,
    Slot,
    TenantQueues,
    TenantSizes,
    current_client,
)
from apicache.store.interface import (
    DEFAULT_MAX_VARIANTS,
    ENTRY_OVERHEAD,
    VARIANT_OVERHEAD,
    CachedResponse,
    IStore,
    Variants,
)
from apicache.store.tagindex import DROPPED, FRESH, TagIndex

__all__ = ["MemoryStore", "EVICTION_REASONS"]

#: How many invalidated resources are remembered for the race rule; a fetch
#: older than the oldest one forgotten is conservatively not stored.
_CHANGES_KEPT = 65536

#: Why entries are evicted (the keys of L{MemoryStore.evictions_by_reason}):
#: expired, taken from another client or tenant above its fair share, over
#: the inserting tenant's cap, or the inserting tenant's own (S3-FIFO's
#: choice).
EVICTION_REASONS = ("expiry", "fair_share", "tenant_cap", "policy")
#: C{store.fair_share} values (SPEC.md section 2).
FAIR_SHARES = ("client", "tenant")


@implementer(IStore)
class MemoryStore:
    """
    Entries in this process, shared fairly between clients and tenants.

    The budget counts each entry's body, stored headers, key and a fixed
    :data:`ENTRY_OVERHEAD`; the total never exceeds ``max_bytes``.  An answer
    (body and stored headers) bigger than ``max_entry_bytes`` is not stored.

    Room for an insert comes from expired entries first, then from the
    client holding the most bytes when it is above its fair share
    (``max_bytes`` / clients holding entries, the inserting one included)
    and above the inserting client (its bytes with the new entry): from
    that client's largest tenant.  Otherwise the room comes from the
    inserting client's own tenants, by the same rule among them (each
    tenant's share: the client's share / its tenants, the inserting one
    included): from its tenant holding the most bytes when that is above its
    share and above the inserting tenant, else from the inserting tenant's
    own entries, or the answer is not stored.  So a client within its share
    never loses an entry to another client's inserts, however many tenant
    ids those name.  With one client (``fair_share="tenant"``, or every
    request of one api-key) this is version 2's rule among tenants.

    The client of an insert is L{apicache.store.eviction.current_client}
    (or the ``client`` given to L{put_now}); with ``fair_share="tenant"``
    every entry counts for one client.  A tenant's entries stored by two
    clients are two queues, one in each client's share.

    A tenant never holds more than ``tenant_max_bytes`` (0: no cap): over
    it, the inserting client's own entries of that tenant go first, and an
    answer that still does not fit is not stored.
    Within a tenant, S3-FIFO chooses (L{apicache.store.eviction}).
    Tagged entries are also in a L{TagIndex}, whose memory counts in the
    budget too; an entry leaves it whenever it leaves the store (evicted,
    expired, replaced, invalidated).

    Variants (v3): each variant of a key is an entry of its own (its own
    slot, charged L{VARIANT_OVERHEAD} more, evicted, expired and purged as
    any other), and the key's list of them, most recently used first, is
    kept beside; an entry leaving the store leaves its key's list.

    @param clock: tells which entries have expired, and spreads the freeing
        of a tag purge's entries over reactor turns; without one, "now" is
        the latest ``stored_at`` stored (never ahead of the real time) and
        purged entries are freed at once.
    @param fair_share: ``"client"`` or ``"tenant"`` (SPEC.md section 2).
    """

    shared = False

    def __init__(
        self,
        max_bytes: int,
        max_entry_bytes: int | None = None,
        *,
        tenant_max_bytes: int = 0,
        clock: IReactorTime | None = None,
        fair_share: str = "client",
    ) -> None:
        if fair_share not in FAIR_SHARES:
            raise ValueError(f"fair_share: expected one of {FAIR_SHARES}, got {fair_share!r}")
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes if max_entry_bytes is None else min(max_entry_bytes, max_bytes)
        self.tenant_max_bytes = tenant_max_bytes
        self.by_client = fair_share == "client"
        self._clock = clock
        self._latest = 0.0
        self._slots: dict[CacheKey, Slot] = {}
        self._clients: dict[int, ClientShare] = {}
        self._client_sizes: TenantSizes[ClientShare] = TenantSizes()
        # tenant -> client -> its queues: a tenant's totals over every client
        self._tenants: dict[str, dict[int, TenantQueues]] = {}
        self._wheel = ExpiryWheel()
        self._ghost = Ghost()
        # tenant -> route -> params -> the key of the one variant, or a set
        # of them: an entry costs one slot here (a set only where a resource
        # has several variants), which counts in ENTRY_OVERHEAD.  Dropping
        # a resource for every tenant visits each tenant holding entries.
        self._index: dict[str, dict[str, dict[tuple[str, ...], CacheKey | set[CacheKey]]]] = {}
        # key -> its variants, most recently used first (only keys whose
        # answers vary have one; see IStore)
        self._lists: dict[CacheKey, Variants] = {}
        self._bytes = 0
        self.evictions_by_reason = dict.fromkeys(EVICTION_REASONS, 0)
        self._hits = 0
        self._misses = 0
        # the race rule: a counter bumped by every change, and when each
        # resource (tenant None = every tenant) or tenant last changed
        self._epoch = 0
        self._changed: dict[Any, int] = {}
        self._forgotten_epoch = 0
        self.tags = TagIndex(clock)

    # -- reading -----------------------------------------------------------

    def lookup(self, key: CacheKey) -> CachedResponse | None:
        slot = self._slots.get(key)
        if slot is None:
            self._misses += 1
            return None
        entry = slot.entry
        if entry is not None and entry.tags and self._tag_purged(key, entry):
            self._misses += 1
            return None
        # the whole cost of a hit for S3-FIFO: no queue moves
        slot.freq += 1
        self._hits += 1
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

    def load(self, key: CacheKey, max_variants: int = DEFAULT_MAX_VARIANTS) -> Deferred[CachedResponse | Variants | None]:
        found = self.lookup(key)
        if found is None and key in self._lists:
            return succeed(self._lists[key])
        return succeed(found)

    def variants(self, key: CacheKey) -> Variants:
        return self._lists.get(key, ())

    def touch_variant(self, key: CacheKey, index: int) -> None:
        held = self._lists.get(key)
        if held is not None and 0 < index < len(held):
            self._lists[key] = _touched(held, index)

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

    def put(
        self, key: CacheKey, entry: CachedResponse, token: Any, max_variants: int = DEFAULT_MAX_VARIANTS
    ) -> Deferred[bool]:
        return succeed(self.put_now(key, entry, token, max_variants=max_variants))

    def put_now(
        self,
        key: CacheKey,
        entry: CachedResponse,
        token: int,
        client: int | None = None,
        max_variants: int = DEFAULT_MAX_VARIANTS,
    ) -> bool:
        """
        Like :meth:`put`, synchronously: return whether ``entry`` was stored.

        @param client: the client it counts for; by default
            L{current_client}.
        """
        if self._changed_since(key, token):
            return False
        if entry.tags and self.tags.refused(key.tenant, entry.tags, token):
            return False
        if entry.stored_at > self._latest:
            self._latest = entry.stored_at
        variant = entry.variant
        base = key = base_key(key)
        if variant is not None:
            key = variant_key(base, variant.selector)
        size = self._charge(key, entry)
        # the old entry goes even when the new answer is too big to keep:
        # it is no longer the upstream's answer; a key stored again goes to
        # the main queue, as one the ghost remembers would
        seen = self._remove(key)
        # an answer that serves every request supersedes its key's
        # variants, and a variant the entry that served every request
        if variant is None:
            if base in self._lists:
                self._drop_variants(base)
        else:
            self._remove(base)
        # SPEC.md section 2: the share of max_bytes limits the answer (body
        # and stored headers), not its bookkeeping; the budget still counts both
        if entry.size() > self.max_entry_bytes or size > self.max_bytes:
            return False
        if self.tenant_max_bytes and size > self.tenant_max_bytes:
            return False
        if not self.by_client:
            client = ANONYMOUS
        elif client is None:
            client = current_client()
        if not self._make_room(client, key.tenant, size):
            return False
        share = self._clients.get(client)
        if share is None:
            share = self._clients[client] = ClientShare(client)
        tenant = share.tenants.get(key.tenant)
        if tenant is None:
            tenant = share.tenants[key.tenant] = TenantQueues(key.tenant, share)
            self._tenants.setdefault(key.tenant, {})[client] = tenant
        slot = Slot(key, entry, size, seen, tenant)
        tenant.add(slot, self._ghost)
        share.bytes += size
        share.entries += 1
        self._slots[key] = slot
        self._bytes += size
        share.sizes.grew(tenant, share.tenants)
        self._client_sizes.grew(share, self._clients)
        self._wheel.add(slot)
        if entry.tags:
            self.tags.add(key, entry.tags, token)
        by_params = self._index.setdefault(key.tenant, {}).setdefault(key.route, {})
        held = by_params.get(key.params)
        if held is None:
            by_params[key.params] = key
        elif isinstance(held, set):
            held.add(key)
        else:
            by_params[key.params] = {held, key}
        if variant is not None:
            kept, dropped = admit_variant(self._lists.get(base, ()), variant, max_variants)
            self._lists[base] = kept
            for gone in dropped:
                self._remove(variant_key(base, gone.selector))
        return True

    def _drop_variants(self, base: CacheKey) -> None:
        """
        Drop every variant of ``base`` (and so its list).
        """
        for v in self._lists.get(base, ()):
            self._remove(variant_key(base, v.selector))
        self._lists.pop(base, None)

    def _unlist(self, key: CacheKey, entry: CachedResponse) -> None:
        """
        Take the variant ``entry``, leaving the store from under ``key``,
        out of its key's list.
        """
        assert entry.variant is not None
        base = base_key(key)
        held = self._lists.get(base)
        if held is None:
            return
        selector = entry.variant.selector
        left = tuple([v for v in held if v.selector != selector])
        if left:
            self._lists[base] = left
        else:
            del self._lists[base]

    def _make_room(self, client: int, name: str, size: int) -> bool:
        """
        Evict until ``size`` more bytes of tenant ``name`` stored by
        ``client`` fit; return whether they do.
        """
        share = self._clients.get(client)
        tenant = share.tenants.get(name) if share is not None else None
        cap = self.tenant_max_bytes
        if cap:
            held = self._tenant_bytes(name)
            # only the inserting client's entries of the tenant go for its
            # cap: another client's never do
            while tenant is not None and tenant.entries and held + size > cap:
                before = tenant.bytes
                self._evict(tenant, "tenant_cap")
                held -= before - tenant.bytes
            if held + size > cap:
                return False
        if self._bytes + size <= self.max_bytes:
            return True
        now = self._clock.seconds() if self._clock is not None else self._latest
        while self._bytes + size > self.max_bytes:
            slot = self._wheel.expired(now)
            if slot is None:
                break
            self._remove(slot.key, on_wheel=False)
            self.evictions_by_reason["expiry"] += 1
        if self._bytes + size > self.max_bytes and not self._may_fit(client, name, size):
            return False
        while self._bytes + size > self.max_bytes:
            share = self._clients.get(client)
            # every client's share is equal, so the client furthest above
            # its share is the largest; while there is no room, a client
            # larger than the inserting one is above its share
            client_share = self.max_bytes / (len(self._clients) + (share is None))
            other = self._client_sizes.largest(self._clients, besides=client)
            if other is not None and other.bytes > client_share and other.bytes > size + (share.bytes if share else 0):
                # from its tenant furthest above its share within it
                victim = other.sizes.largest(other.tenants, besides=None)
                assert victim is not None, "a client holding entries has a tenant"
                self._evict(victim, "fair_share")
                continue
            if share is None:
                # a new client with nothing to give, nobody else above its share
                return False
            # the same rule among the inserting client's own tenants
            tenant = share.tenants.get(name)
            own = size + (tenant.bytes if tenant is not None else 0)
            tenant_share = client_share / (len(share.tenants) + (tenant is None))
            other_tenant = share.sizes.largest(share.tenants, besides=name)
            if other_tenant is not None and other_tenant.bytes > tenant_share and other_tenant.bytes > own:
                self._evict(other_tenant, "fair_share")
            elif tenant is not None:
                self._evict(tenant, "policy")
            else:
                # alone above its share with nothing left to give
                return False
        return True

    def _may_fit(self, client: int, name: str, size: int) -> bool:
        """
        Return whether an answer of ``size`` bytes may fit once the others
        gave what they would: each other client, and each other tenant of
        the inserting client, keeps up to ``size`` (the rule never cuts one
        below the inserting side).  Counted (O(clients + the client's
        tenants)) only for an answer bigger than its tenant's share, so that
        one that can't fit is refused before anything is evicted.
        """
        share = self._clients.get(client)
        tenants = share.tenants if share is not None else {}
        client_share = self.max_bytes / (len(self._clients) + (share is None))
        if size <= client_share / (len(tenants) + (name not in tenants)):
            return True
        kept = sum([min(c.bytes, size) for n, c in self._clients.items() if n != client])
        kept += sum([min(t.bytes, size) for n, t in tenants.items() if n != name])
        return kept + size <= self.max_bytes

    def _tenant_bytes(self, name: str) -> int:
        """
        Return the bytes tenant ``name`` holds, over every client.
        """
        return sum([t.bytes for t in self._tenants.get(name, {}).values()])

    def _evict(self, tenant: TenantQueues, reason: str) -> None:
        slot = tenant.victim(self._ghost, int(len(self._slots) * GHOST_SHARE))
        assert slot is not None, "a tenant holding entries has a victim"
        self._forget_slot(slot, tenant)
        self._wheel.removed(len(self._slots), self._slots.values())
        self.evictions_by_reason[reason] += 1

    def release(self, key: CacheKey, token: Any) -> None:
        # nobody outside this process waits for a fetch
        pass

    @staticmethod
    def _charge(key: CacheKey, entry: CachedResponse) -> int:
        size = entry.size() + key.size() + ENTRY_OVERHEAD + TagIndex.charge(entry.tags)
        return size if entry.variant is None else size + VARIANT_OVERHEAD

    def _remove(self, key: CacheKey, on_wheel: bool = True) -> bool:
        """
        Drop the entry under ``key`` (not an eviction); return whether there
        was one.  ``on_wheel``: its slot is still on the expiry wheel.
        """
        slot = self._slots.get(key)
        if slot is None:
            return False
        tenant = slot.owner
        tenant.removed(slot)
        self._forget_slot(slot, tenant)
        if on_wheel:
            self._wheel.removed(len(self._slots), self._slots.values())
        return True

    def _forget_slot(self, slot: Slot, tenant: TenantQueues) -> None:
        """
        Take ``slot``, out of its tenant's queues and counts already, out of
        the map, the indexes (the tag index too: evicted, expired, replaced
        and invalidated entries all come here) and the budget.
        """
        key = slot.key
        del self._slots[key]
        entry = slot.entry
        if entry is not None:
            if entry.tags:
                self.tags.remove(key, entry.tags)
            if entry.variant is not None:
                self._unlist(key, entry)
        slot.entry = None
        self._bytes -= slot.size
        share = tenant.client
        share.bytes -= slot.size
        share.entries -= 1
        if not tenant.entries:
            del share.tenants[key.tenant]
            by_client = self._tenants[key.tenant]
            del by_client[share.name]
            if not by_client:
                del self._tenants[key.tenant]
            if not share.entries:
                del self._clients[share.name]
        routes = self._index[key.tenant]
        by_params = routes[key.route]
        held = by_params[key.params]
        if isinstance(held, set):
            held.discard(key)
            if len(held) == 1:
                by_params[key.params] = held.pop()
            return
        del by_params[key.params]
        if not by_params:
            del routes[key.route]
            if not routes:
                del self._index[key.tenant]

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
            entry = self._slots[k].entry
            assert entry is not None
            entry.stale = True
            entry.retry_at = 0.0
        return succeed(len(keys))

    def clear(self, tenant: str | None) -> Deferred[int]:
        if tenant is None:
            self._note_change("all")
            n = len(self._slots)
            for slot in self._slots.values():
                slot.entry = None
            self._slots.clear()
            self._tenants.clear()
            self._clients.clear()
            self._client_sizes.clear()
            self._wheel.clear()
            self._ghost = Ghost()
            self._index.clear()
            self._lists.clear()
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
        slot = self._slots.get(key)
        entry = slot.entry if slot is not None else None
        # the key may hold a newer entry, stored after the purge; a refresh
        # marks its entries here too, so that its generation may be
        # forgotten later (L{TagIndex})
        if entry is not None and entry.tags:
            self._tag_purged(key, entry)

    def forget(self, tenant: str, route: str) -> None:
        for k in self._all(self._index.get(tenant, {}).get(route, {}).values()):
            self._remove(k)

    # -- health ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._slots), "bytes": self._bytes, "evictions": sum(self.evictions_by_reason.values())}

    def tag_stats(self) -> dict[str, int]:
        return self.tags.stats()

    def detailed_stats(self) -> dict[str, int]:
        """
        Return L{stats} plus ``tenants`` (holding entries), ``hits`` and
        ``lookups`` (of L{lookup}: an entry found, fresh or not) and
        ``evictions_<reason>`` for each of L{EVICTION_REASONS}.
        """
        out = self.stats()
        out["tenants"] = len(self._tenants)
        out["clients"] = len(self._clients)
        out["hits"] = self._hits
        out["lookups"] = self._hits + self._misses
        for reason, n in self.evictions_by_reason.items():
            out[f"evictions_{reason}"] = n
        return out

    def top_tenants(self, n: int = 10) -> list[tuple[str, int, int]]:
        """
        Return ``(tenant, bytes, entries)`` of the ``n`` tenants holding the
        most bytes, largest first (O(tenants log n): for metrics scrapes).
        """
        totals = [
            (name, sum([t.bytes for t in by_client.values()]), sum([t.entries for t in by_client.values()]))
            for name, by_client in self._tenants.items()
        ]
        return heapq.nlargest(n, totals, key=lambda t: t[1])

    def tenant_entries(self) -> dict[str, int]:
        """
        Return the entries held per tenant (read at metrics scrape time).
        """
        return {name: sum([t.entries for t in by_client.values()]) for name, by_client in self._tenants.items()}

    def client_sizes(self) -> dict[int, tuple[int, int]]:
        """
        Return ``(bytes, entries)`` held per client (L{current_client}'s
        numbers; read at metrics scrape time).
        """
        return {name: (c.bytes, c.entries) for name, c in self._clients.items()}

    def is_ready(self) -> bool:
        return True
