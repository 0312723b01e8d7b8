"""
The store interface: where cached answers live.

A store holds :class:`CachedResponse` values under :class:`CacheKey` keys.
It knows nothing of tenants' caches, routes or HTTP; the cache core calls it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from apicache.cache.keys import CacheKey
from apicache.cache.variants import Variant

__all__ = [
    "IStore",
    "CachedResponse",
    "CachedVariant",
    "StoreUnavailable",
    "ENTRY_OVERHEAD",
    "VARIANT_OVERHEAD",
    "DEFAULT_MAX_VARIANTS",
    "Variants",
]

#: A key's stored variants (RFC 9111 section 4.1), most recently used first.
Variants = tuple[Variant, ...]

#: The route's C{max_variants} when none is given (SPEC.md section 2).
DEFAULT_MAX_VARIANTS = 16

#: Bytes charged for each entry on top of its body, headers and key: the
#: Python objects that hold it (the key tuple, its parameter strings, the
#: entry object and its floats, the lookup map's and the index's slots, the
#: eviction slot with its queue and expiry wheel places, the bytes objects'
#: headers).  ``bench/run.py --memory-probe 100000`` measures 612 bytes in
#: resident memory per 1 KiB entry of a one-parameter route (version 3:
#: client accounting, variants, tags; 561 in version 2, 485 with the LRU
#: before S3-FIFO); 624 covers that, and the budget for bookkeeping is 640.
ENTRY_OVERHEAD = 624
#: Bytes charged on top of L{ENTRY_OVERHEAD} for an entry that is one of its
#: key's variants (L{CachedVariant}): its L{Variant} record (a 16-byte
#: selector, its date), its own key (the key's and the selector, a string of
#: its own), its place in its key's list of variants and that list, the
#: key the list is held under.  C{bench/run.py --memory-probe 100000
#: --vary} measures 421 bytes more per entry than without C{Vary} (1033
#: against 612, every key holding one variant: the most a variant costs).
#: An entry that serves every request of its key costs nothing more.
VARIANT_OVERHEAD = 432


class StoreUnavailable(Exception):
    """The store could not be reached (Redis down or too slow)."""


class CachedResponse:
    """
    An upstream answer as the cache keeps it.

    @ivar status: the HTTP status code.
    @ivar headers: the replayed headers, as ``(name, value)`` byte pairs.
    @ivar body: the body.
    @ivar stored_at: when it was fetched (``clock.seconds()``).
    @ivar expires_at: when it stops being fresh.
    @ivar stale_until: the last moment it may be served stale
        (``expires_at`` plus the route's ``stale_if_error``).
    @ivar stale: marked stale by a ``refresh`` event: served as ``STALE``
        while one background re-fetch replaces it.
    @ivar retry_at: no background re-fetch starts before this time.
    @ivar head: the replayed headers as written on the wire, built once when
        the answer arrives (L{apicache.cache.wire.header_block}).
    @ivar swr_until: the last moment it may be served stale while one
        background revalidation runs (``stale_while_revalidate``).
    @ivar keep_until: when it may be dropped: past every stale window and,
        with a validator, past ``keep`` (kept for revalidation).
    @ivar no_cache: revalidated before every use (``Cache-Control: no-cache``).
    @ivar sent_at: when the upstream request that fetched or last
        revalidated it was sent (F of bounded staleness, SPEC.md section 5).
    @ivar tags: the tags it carries (L{apicache.cache.tags}); a purge of any of
        them drops it.
    @ivar variant: (v3) C{None}: the answer serves every request of its
        key.  A L{CachedVariant} is one of the variants of a key instead.
    """

    __slots__ = (
        "status",
        "headers",
        "body",
        "stored_at",
        "expires_at",
        "stale_until",
        "stale",
        "retry_at",
        "head",
        "swr_until",
        "keep_until",
        "no_cache",
        "sent_at",
        "tags",
    )

    #: a class attribute, not a slot: an entry that serves every request
    #: of its key (most do) pays nothing for variants
    variant: Variant | None = None

    def __init__(
        self,
        status: int,
        headers: tuple[tuple[bytes, bytes], ...],
        body: bytes,
        stored_at: float = 0.0,
        expires_at: float = 0.0,
        stale_until: float = 0.0,
        stale: bool = False,
        retry_at: float = 0.0,
        head: bytes = b"",
        swr_until: float = 0.0,
        keep_until: float = 0.0,
        no_cache: bool = False,
        sent_at: float = 0.0,
        tags: tuple[str, ...] = (),
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stored_at = stored_at
        self.expires_at = expires_at
        self.stale_until = stale_until
        self.stale = stale
        self.retry_at = retry_at
        self.head = head
        self.swr_until = swr_until
        self.keep_until = keep_until
        self.no_cache = no_cache
        self.sent_at = sent_at
        self.tags = tags

    def size(self) -> int:
        """
        Return the bytes of body and headers (the stored pairs and their
        wire form).
        """
        return len(self.body) + len(self.head) + sum(len(k) + len(v) for k, v in self.headers)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, CachedResponse):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in _FIELDS)

    def __repr__(self) -> str:
        return (
            f"CachedResponse(status={self.status}, body={len(self.body)} bytes, "
            f"stored_at={self.stored_at}, expires_at={self.expires_at}, stale={self.stale})"
        )


class CachedVariant(CachedResponse):
    """
    (v3) A L{CachedResponse} that is one of the variants of a key whose
    answers vary (C{Vary}, or a content coding: RFC 9111 section 4.1).

    @ivar variant: what tells it apart from the key's other variants.
    """

    __slots__ = ("variant",)

    def __init__(self, *args: Any, variant: Variant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variant = variant


#: What L{CachedResponse.__eq__} compares.
_FIELDS = (*CachedResponse.__slots__, "variant")


class IStore(Interface):
    """
    A place to keep cached answers, bounded in bytes.

    Invalidation works on resources: ``(tenant, route, params)``, with every
    variant under it.  ``tenant=None`` means every tenant.

    Variants (v3, RFC 9111 section 4.1): under one key a store holds
    either one entry that serves every request (its C{variant} is
    C{None}), or up to C{max_variants} entries whose C{variant} tells them
    apart, each under the key L{apicache.cache.keys.variant_key} makes of
    it and its selector.  :meth:`put` keeps that so: an entry that serves
    every request replaces every variant of its key, a variant replaces
    the entry that served every request, and past C{max_variants} the
    least recently used variant goes.  :meth:`variants` and :meth:`load`
    tell which variants a key holds; every invalidation of a resource
    covers all of them.

    The race rule (SPEC.md section 3) is the store's: :meth:`begin` returns a
    token before a fetch starts, and :meth:`put` with that token stores
    nothing if the resource was invalidated, marked stale or cleared since.
    """

    shared = Attribute(
        "True if other processes may write the store (then a local miss must "
        "be confirmed with load())."
    )

    def lookup(key: CacheKey) -> CachedResponse | None:
        """
        Return the entry held in this process for ``key``, or ``None``.
        Synchronous: the cache-hit path.
        """

    def load(key: CacheKey, max_variants: int = DEFAULT_MAX_VARIANTS) -> Deferred[CachedResponse | Variants | None]:
        """
        Fire with the entry for ``key`` wherever it is held, or ``None``;
        for a key that holds variants, with its L{Variants} instead (then
        load the one chosen by its L{apicache.cache.keys.variant_key}).
        Errback with L{StoreUnavailable}.

        @param max_variants: the route's, for the copy a shared store keeps
            in this process.
        """

    def variants(key: CacheKey) -> Variants:
        """
        Return the variants of ``key`` held in this process, most recently
        used first (C{()} when none).  Synchronous: the cache-hit path.
        """

    def touch_variant(key: CacheKey, index: int) -> None:
        """
        Note that the variant at ``index`` of L{variants}C{(key)} was
        served: it is now the most recently used.
        """

    def begin(key: CacheKey) -> Deferred[Any]:
        """
        Fire with a token to pass to :meth:`put` for a fetch starting now.
        Errback with L{StoreUnavailable}.
        """

    def put(
        key: CacheKey, entry: CachedResponse, token: Any, max_variants: int = DEFAULT_MAX_VARIANTS
    ) -> Deferred[bool]:
        """
        Store ``entry`` unless the resource changed since ``token`` was
        taken, or the entry is too big.  Fire with whether it was stored.
        Errback with L{StoreUnavailable}.

        @param key: the key the fetch was for: a request's key, or one of
            its variants' (the fetch's lock, if any, is released).  The
            entry goes under the key its C{variant} says (see above).
        @param max_variants: how many variants its key may hold.
        """

    def release(key: CacheKey, token: Any) -> None:
        """
        The fetch that took ``token`` ends without :meth:`put` (not storable,
        or failed): a shared store lets other instances waiting for it
        fetch now.  Never raises.
        """

    def discard(key: CacheKey) -> Deferred[int]:
        """
        Drop the one entry under ``key`` (a variant's key drops that
        variant).  Fire with the number dropped.
        """

    def invalidate(tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Drop every variant of the resource.  Fire with the number dropped.
        Errback with L{StoreUnavailable}.
        """

    def mark_stale(tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Mark every variant of the resource stale.  Fire with the number marked.
        Errback with L{StoreUnavailable}.
        """

    def clear(tenant: str | None) -> Deferred[int]:
        """
        Drop every entry (of ``tenant``).  Fire with the number dropped.
        Errback with L{StoreUnavailable}.
        """

    def purge_tag(tenant: str | None, tag: str, stale: bool = False) -> Deferred[int]:
        """
        Drop (or with ``stale``, mark stale) every entry carrying ``tag`` of
        ``tenant``, or of every tenant when ``None``.  Takes effect for every
        later read at once, and a fetch begun before it does not store an
        answer carrying ``tag`` (the race rule); memory may be freed later.
        Fire with the number of entries that carried it.  Errback with
        L{StoreUnavailable}.
        """

    def tag_stats() -> dict[str, int]:
        """
        Return ``tags`` and ``pairs`` ((entry, tag) pairs) of this
        process's tag index.
        """

    def forget(tenant: str, route: str) -> None:
        """
        Release what this process holds for a reclaimed (tenant, route) cache.
        """

    def stats() -> dict[str, int]:
        """
        Return ``entries``, ``bytes`` and ``evictions`` of this process's tier.
        """

    def is_ready() -> bool:
        """
        Return whether the store is reachable.
        """
