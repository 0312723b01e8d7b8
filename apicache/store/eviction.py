"""
What the memory store evicts: expired entries first (L{ExpiryWheel}), then
the largest client's (L{ClientShare}) and within it the largest tenant's
(L{TenantSizes}), and within a tenant what S3-FIFO (Yang et al., SOSP '23)
would (L{TenantQueues}).

Every structure here is O(1) per entry operation (amortised), except the
choice of a client or a tenant: O(log clients), O(log tenants).  Removal
anywhere is lazy: a dropped L{Slot} loses its entry at once (so its body is
freed) and is skipped when a queue reaches it; queues holding more dead
slots than live ones are compacted, which keeps memory bounded under any
mix of inserts and purges.

Which client an insert is for (SPEC.md section 3, C{fair_share =
"client"}): the api-key its request carried, as a small number
(L{apicache.auth.apikey.ApiKeys.client}, 0 for anonymous callers).  The
HTTP layer says so with L{acting_for} around the call that may fetch and
store; the store reads it with L{current_client} when the answer is put.
A context variable rather than a parameter because a store is reached
through the cache core, which has no business knowing callers: Twisted runs
every coroutine step in the context it started in, so the answer stored
seconds later, after the upstream or Redis answered, still counts for the
client whose request fetched it.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, Protocol, TypeVar

from apicache.cache.keys import CacheKey
from apicache.store.interface import CachedResponse

__all__ = [
    "ANONYMOUS",
    "Slot",
    "TenantQueues",
    "ClientShare",
    "Ghost",
    "ExpiryWheel",
    "TenantSizes",
    "acting_for",
    "current_client",
]

#: The client of requests that carried no api-key (or one not configured),
#: and of everything stored outside a request.
ANONYMOUS = 0

_client: ContextVar[int] = ContextVar("apicache_client", default=ANONYMOUS)


def current_client() -> int:
    """
    Return the client the store counts an insert for now (L{acting_for}).
    """
    return _client.get()


@contextmanager
def acting_for(client: int) -> Iterator[None]:
    """
    Count what is stored under this block (and in the coroutines started
    in it, however much later they store) for C{client}.
    """
    token = _client.set(client)
    try:
        yield
    finally:
        _client.reset(token)

#: S3-FIFO's small queue holds this share of a tenant's bytes: new keys wait
#: there, and only those asked for again while in it move to the main queue.
#: The paper's 10 % lost 0.3-0.4 points of hit ratio to 5 % on every trace of
#: ``make bench-hitratio`` (2 % gained as much again on those static Zipf
#: traces, but leaves new keys little time to prove themselves on real ones).
SMALL_SHARE = 0.05
#: a main-queue entry survives this many passes of the queue without a hit
MAX_FREQ = 3
#: the ghost remembers this many keys per entry held (on the Zipf traces of
#: ``make bench-hitratio`` half an entry beat one or two)
GHOST_SHARE = 0.5
#: Bloom filter bits per key the ghost remembers (two hash functions: about
#: 1.4 % false positives per generation)
GHOST_BITS_PER_KEY = 16
_GHOST_MIN_KEYS = 64
#: queues may hold this many dead slots beyond their live ones before a compaction
_SLACK = 32


class Slot:
    """
    One stored entry, as the lookup map, its tenant's queue and the expiry
    wheel hold it.

    @ivar entry: the entry, or C{None} once dropped.
    @ivar size: the bytes charged for it.
    @ivar freq: hits since S3-FIFO last looked at it (a hit only adds one).
    @ivar main: in its tenant's main queue (else in the small one).
    @ivar owner: the queues holding it: its tenant's, of the client that
        stored it.
    """

    __slots__ = ("key", "entry", "size", "freq", "main", "owner")

    def __init__(self, key: CacheKey, entry: CachedResponse, size: int, main: bool, owner: TenantQueues) -> None:
        self.key = key
        self.entry: CachedResponse | None = entry
        self.size = size
        self.freq = 0
        self.main = main
        self.owner = owner


class Ghost:
    """
    The keys the small queues evicted lately, as hashes in two generations
    of Bloom filters: a key asked for again soon after its eviction goes
    straight to its tenant's main queue.  About 4 bytes per key remembered,
    where a set of hashes would cost some 60.

    One ghost serves every tenant, sized by the whole store, as in a global
    S3-FIFO: a tenant scanning new keys churns its own small queue fast,
    and a ghost of its own would forget its other keys as fast (on the
    20-tenant trace of ``make bench-hitratio`` a shared ghost gained 2
    points of hit ratio at 1 % of the unique bytes).  Membership only picks
    the queue of the tenant's own insert, so it moves no bytes between
    tenants.
    """

    __slots__ = ("current", "previous", "added", "capacity")

    def __init__(self) -> None:
        self.current = bytearray()
        self.previous = bytearray()
        self.added = 0
        self.capacity = 0

    def add(self, h: int, capacity: int) -> None:
        """
        Remember hash ``h``; a generation holds ``capacity`` keys (the
        caller passes L{GHOST_SHARE} of the entries held when the
        generation starts).
        """
        if self.added >= self.capacity:
            self.previous = self.current
            self.capacity = max(capacity, _GHOST_MIN_KEYS)
            size = 1 << (self.capacity * GHOST_BITS_PER_KEY - 1).bit_length()
            self.current = bytearray(size >> 3)
            self.added = 0
        self.added += 1
        bits = self.current
        mask = (len(bits) << 3) - 1
        a, b = h & mask, (h >> 32) & mask
        bits[a >> 3] |= 1 << (a & 7)
        bits[b >> 3] |= 1 << (b & 7)

    def __contains__(self, h: int) -> bool:
        for bits in (self.current, self.previous):
            if bits:
                mask = (len(bits) << 3) - 1
                a, b = h & mask, (h >> 32) & mask
                if bits[a >> 3] & (1 << (a & 7)) and bits[b >> 3] & (1 << (b & 7)):
                    return True
        return False


class TenantQueues:
    """
    One tenant's entries in S3-FIFO's two queues, with its byte and entry
    counts.

    New keys enter the small queue; those hit while there move to the main
    queue when the small one evicts, the others leave (and the ghost
    remembers them).  The main queue reinserts an entry hit since its last
    turn, up to L{MAX_FREQ} turns.  So a one-pass scan of new keys flows
    through the small queue without touching the main one.  The store's
    L{Ghost} remembers keys the small queue evicted.

    A tenant whose entries several clients stored has queues in each of
    them: what one client stored never counts against another.

    @ivar client: the client's share these queues belong to.
    """

    __slots__ = ("name", "client", "bytes", "entries", "small", "main", "small_bytes", "dead")

    def __init__(self, name: str, client: ClientShare | None = None) -> None:
        self.name = name
        self.client = client if client is not None else ClientShare(ANONYMOUS)
        self.bytes = 0
        self.entries = 0
        self.small: deque[Slot] = deque()
        self.main: deque[Slot] = deque()
        self.small_bytes = 0
        self.dead = 0

    def add(self, slot: Slot, ghost: Ghost) -> None:
        """
        Queue a new slot: in the main queue when ``slot.main`` is set or the
        ghost remembers its key, else in the small queue.
        """
        if slot.main or hash(slot.key) in ghost:
            slot.main = True
            self.main.append(slot)
        else:
            self.small.append(slot)
            self.small_bytes += slot.size
        self.bytes += slot.size
        self.entries += 1

    def removed(self, slot: Slot) -> None:
        """
        Account for ``slot`` dropped outside L{victim} (it stays queued, dead).
        """
        self.bytes -= slot.size
        self.entries -= 1
        if not slot.main:
            self.small_bytes -= slot.size
        self.dead += 1
        if self.dead > self.entries + _SLACK:
            self.small = deque(s for s in self.small if s.entry is not None)
            self.main = deque(s for s in self.main if s.entry is not None)
            self.dead = 0

    def victim(self, ghost: Ghost, remembered: int) -> Slot | None:
        """
        Return the slot S3-FIFO evicts next, out of the queues and the
        counts (the caller drops it), or C{None} when the tenant holds
        nothing.  A key the small queue evicts goes to ``ghost``, whose
        generations hold ``remembered`` keys.
        """
        small, main = self.small, self.main
        while self.entries:
            if self.small_bytes and (self.small_bytes >= self.bytes * SMALL_SHARE or self.small_bytes == self.bytes):
                slot = small.popleft()
                if slot.entry is None:
                    self.dead -= 1
                    continue
                self.small_bytes -= slot.size
                if slot.freq:
                    slot.freq = min(slot.freq, MAX_FREQ) - 1
                    slot.main = True
                    main.append(slot)
                    continue
                ghost.add(hash(slot.key), remembered)
            else:
                slot = main.popleft()
                if slot.entry is None:
                    self.dead -= 1
                    continue
                if slot.freq:
                    slot.freq = min(slot.freq, MAX_FREQ) - 1
                    main.append(slot)
                    continue
            self.bytes -= slot.size
            self.entries -= 1
            return slot
        return None


class ExpiryWheel:
    """
    Slots by the second their entry expires (rounded up, so a slot is only
    ever judged expired late, never early), oldest second first.
    """

    __slots__ = ("buckets", "seconds", "dead")

    def __init__(self) -> None:
        self.buckets: dict[int, list[Slot]] = {}
        self.seconds: list[int] = []
        self.dead = 0

    def add(self, slot: Slot) -> None:
        """
        File ``slot`` under its entry's ``expires_at``.
        """
        assert slot.entry is not None
        at = slot.entry.expires_at
        if not math.isfinite(at):
            return
        second = math.ceil(at)
        bucket = self.buckets.get(second)
        if bucket is None:
            self.buckets[second] = [slot]
            heapq.heappush(self.seconds, second)
        else:
            bucket.append(slot)

    def removed(self, live: int, slots: Iterable[Slot]) -> None:
        """
        Count a slot dropped elsewhere; compact when dead slots outnumber the
        ``live`` ones (``slots``: every live slot).
        """
        self.dead += 1
        if self.dead > live + 1024:
            self.clear()
            for slot in slots:
                self.add(slot)

    def expired(self, now: float) -> Slot | None:
        """
        Return a live slot whose entry expired by ``now``, taken off the
        wheel, or C{None}.
        """
        seconds = self.seconds
        while seconds and seconds[0] <= now:
            bucket = self.buckets[seconds[0]]
            while bucket:
                slot = bucket.pop()
                entry = slot.entry
                if entry is None:
                    self.dead -= 1
                elif entry.expires_at > now:
                    # made fresh again in place (a revalidation): file it anew
                    self.add(slot)
                else:
                    return slot
            del self.buckets[heapq.heappop(seconds)]
        return None

    def clear(self) -> None:
        """
        Forget every slot.
        """
        self.buckets.clear()
        self.seconds.clear()
        self.dead = 0


class ClientShare:
    """
    One client's part of the store: its bytes and entries, and the queues
    of each tenant it stored entries for, by tenant name.

    @ivar name: the client (L{current_client}'s number).
    @ivar sizes: its tenants by bytes held.
    """

    __slots__ = ("name", "bytes", "entries", "tenants", "sizes")

    def __init__(self, name: int) -> None:
        self.name = name
        self.bytes = 0
        self.entries = 0
        self.tenants: dict[str, TenantQueues] = {}
        self.sizes: TenantSizes[TenantQueues] = TenantSizes()


class _Holder(Protocol):
    """What L{TenantSizes} orders: a tenant's queues, or a client's share."""

    @property
    def name(self) -> Any: ...

    @property
    def bytes(self) -> int: ...


_H = TypeVar("_H", bound=_Holder)


class TenantSizes(Generic[_H]):
    """
    Tenants (or clients) by bytes held, largest first: a max-heap pushed on
    every growth and corrected lazily when one that shrank comes to the
    top, so finding the largest costs O(log n) amortised.
    """

    __slots__ = ("heap",)

    def __init__(self) -> None:
        self.heap: list[tuple[int, Any]] = []

    def grew(self, tenant: _H, tenants: Mapping[Any, _H]) -> None:
        """
        Note that ``tenant`` grew; ``tenants``: every one holding entries.
        """
        heap = self.heap
        heapq.heappush(heap, (-tenant.bytes, tenant.name))
        if len(heap) > 2 * len(tenants) + 64:
            self.heap = [(-t.bytes, name) for name, t in tenants.items()]
            heapq.heapify(self.heap)

    def largest(self, tenants: Mapping[Any, _H], besides: Any) -> _H | None:
        """
        Return the one of ``tenants`` holding the most bytes other than
        ``besides`` (a name), or C{None} when there is none.
        """
        heap = self.heap
        mine: Any = None
        found = None
        while heap:
            neg, name = heap[0]
            t = tenants.get(name)
            if t is None:
                heapq.heappop(heap)
            elif t.bytes != -neg:
                heapq.heapreplace(heap, (-t.bytes, name))
            elif name == besides:
                mine = heapq.heappop(heap)
            else:
                found = t
                break
        if mine is not None:
            heapq.heappush(heap, mine)
        return found

    def clear(self) -> None:
        """
        Forget every tenant.
        """
        self.heap.clear()
