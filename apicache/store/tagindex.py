"""
The in-process tag index: which entries carry a tag, and the generations
that make a tag purge take effect at once (SPEC.md section 3, "Tags").

A purge bumps a generation of (tenant, tag), or of the tag for every tenant,
to the store's next sequence number: O(1).  An entry remembers the sequence
it was stored under (its fetch's token), and reading it checks the
generations of its own tags against that: a purged entry is never served,
whether or not its memory was freed yet.  Storing an answer checks the same
generations against the token, which is the race rule for tags.  Dropping
the entries themselves only frees memory, in bounded batches across reactor
turns, so no request waits on a purge of 100k entries.

The index's memory counts in the store's budget: L{TagIndex.charge}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.interfaces import IReactorTime

from apicache.cache.keys import CacheKey

__all__ = ["TagIndex", "FRESH", "DROPPED", "STALE", "PAIR_CHARGE", "ENTRY_CHARGE"]

#: Verdicts of L{TagIndex.check}.
FRESH = 0
DROPPED = 1
STALE = 2

#: Bytes charged per (entry, tag) pair on top of the tag's own bytes: its
#: slot in the tag's member set and in the entry's tags tuple (bench/tags.py
#: measures what a pair really costs).
PAIR_CHARGE = 48
#: Bytes charged per tagged entry: its sequence number and its slot in the
#: sequence map.
ENTRY_CHARGE = 64
#: Entries a purge walks per reactor turn (1-2 ms of work).
REAP_BATCH = 200
#: Tags whose generations are remembered; past this the oldest is
#: forgotten and every tagged entry stored before it is treated as purged
#: (conservative: a spurious miss, never a purged entry served).
MAX_GENERATIONS = 65536


#: The entries carrying a tag within one tenant: the key of the only one
#: (the common ``object:{id}`` case costs no set), or a set of keys.
_Held = CacheKey | set[CacheKey]


def _keys(held: _Held) -> Iterator[CacheKey]:
    return iter(held) if isinstance(held, set) else iter((held,))


def _count(held: _Held) -> int:
    return len(held) if isinstance(held, set) else 1


def _tenant(held: _Held) -> str:
    return next(iter(held)).tenant if isinstance(held, set) else held.tenant


def _with(held: _Held | None, key: CacheKey) -> _Held:
    """Return ``held`` with ``key`` added (a set only for two or more)."""
    if held is None or held == key:
        return key
    if isinstance(held, set):
        held.add(key)
        return held
    return {held, key}


def _without(held: _Held, key: CacheKey) -> _Held | None:
    """Return ``held`` without ``key`` (``None`` once empty)."""
    if isinstance(held, set):
        held.discard(key)
        return next(iter(held)) if len(held) == 1 else held
    return None if held == key else held


class _Sweep:
    """
    One purge's walk over the entries that carried its tag (detached from
    the index), reaping each: at most a batch per reactor turn.
    """

    __slots__ = ("keys", "reap")

    def __init__(self, keys: Iterator[CacheKey], reap: Callable[[CacheKey], Any]) -> None:
        self.keys = keys
        self.reap = reap


class TagIndex:
    """
    Tags of the entries of one in-process store.

    An entry is indexed under each of its tags: while one tenant's entries
    carry a tag, its member is their key (or set of keys) alone; once
    several tenants' do, a dict from tenant to those.  So a tenant's purge
    detaches its entries in O(1), and a tag of one entry costs no set.

    @param clock: spreads a purge's walk over reactor turns; ``None`` walks
        at once (tests).
    """

    def __init__(self, clock: IReactorTime | None = None, batch: int = REAP_BATCH) -> None:
        self._clock = clock
        self._batch = batch
        #: tag -> its entries, of one tenant or (a dict) by tenant
        self._members: dict[str, _Held | dict[str, _Held]] = {}
        #: tagged entry -> the sequence it was stored under
        self._seq: dict[CacheKey, int] = {}
        #: tag -> tenant (None: every tenant) -> latest purge (drop or stale)
        self._latest: dict[str, dict[str | None, int]] = {}
        #: tag -> tenant (None: every tenant) -> latest drop
        self._drops: dict[str, dict[str | None, int]] = {}
        self._floor = 0
        self._sweeps: deque[_Sweep] = deque()
        self._scheduled = False
        #: (entry, tag) pairs held now
        self.pairs = 0

    @staticmethod
    def charge(tags: tuple[str, ...]) -> int:
        """
        Return the bytes an entry carrying ``tags`` costs the index.
        """
        if not tags:
            return 0
        return ENTRY_CHARGE + sum([PAIR_CHARGE + len(t) for t in tags])

    # -- the hit path --------------------------------------------------------

    def check(self, key: CacheKey, tags: tuple[str, ...]) -> int:
        """
        Return L{FRESH}, L{DROPPED} or L{STALE} for the entry under ``key``
        carrying ``tags``: whether a purge of one of them came after it was
        stored.  One dict lookup per tag when none of them was ever purged.
        """
        seq = self._seq.get(key)
        if seq is None or seq < self._floor:
            return DROPPED
        latest = self._latest
        verdict = FRESH
        for tag in tags:
            gens = latest.get(tag)
            if gens is None:
                continue
            if gens.get(key.tenant, 0) > seq or gens.get(None, 0) > seq:
                drops = self._drops.get(tag)
                if drops is not None and (drops.get(key.tenant, 0) > seq or drops.get(None, 0) > seq):
                    return DROPPED
                verdict = STALE
        return verdict

    def refused(self, tenant: str, tags: tuple[str, ...], token: int) -> bool:
        """
        Return whether an answer carrying ``tags``, fetched with ``token``,
        must not be stored: one of its tags was purged since.
        """
        if token < self._floor:
            return True
        latest = self._latest
        for tag in tags:
            gens = latest.get(tag)
            if gens is not None and (gens.get(tenant, 0) > token or gens.get(None, 0) > token):
                return True
        return False

    # -- membership ----------------------------------------------------------

    def add(self, key: CacheKey, tags: tuple[str, ...], seq: int) -> None:
        """
        Index an entry stored under ``seq``.
        """
        self._seq[key] = seq
        members = self._members
        tenant = key.tenant
        for tag in tags:
            held = members.get(tag)
            if held is None:
                members[tag] = key
            elif isinstance(held, dict):
                held[tenant] = _with(held.get(tenant), key)
            elif _tenant(held) == tenant:
                members[tag] = _with(held, key)
            else:
                members[tag] = {_tenant(held): held, tenant: key}
        self.pairs += len(tags)

    def remove(self, key: CacheKey, tags: tuple[str, ...]) -> None:
        """
        Forget an entry (dropped, evicted, expired or replaced).
        """
        if self._seq.pop(key, None) is None:
            return
        self.pairs -= len(tags)
        members = self._members
        tenant = key.tenant
        for tag in tags:
            held = members.get(tag)
            if held is None:
                continue
            if isinstance(held, dict):
                mine = held.get(tenant)
                if mine is None:
                    continue
                left = _without(mine, key)
                if left is not None:
                    held[tenant] = left
                    continue
                del held[tenant]
                if len(held) == 1:
                    members[tag] = next(iter(held.values()))
                continue
            if _tenant(held) != tenant:
                continue
            left = _without(held, key)
            if left is None:
                del members[tag]
            else:
                members[tag] = left

    def clear(self) -> None:
        """
        Forget every entry (the store dropped them all); generations stay.
        """
        self._members.clear()
        self._seq.clear()
        self.pairs = 0

    # -- purges --------------------------------------------------------------

    def purge(self, tenant: str | None, tag: str, stale: bool, seq: int, reap: Callable[[CacheKey], Any]) -> int:
        """
        Purge ``tag`` (of ``tenant``, or of every tenant) as of sequence
        ``seq``: at once for every later check; ``stale`` marks the entries
        stale (as they are read) instead of dropping them.  The entries of a
        drop are then walked in batches, one per reactor turn, calling
        ``reap`` on each (``reap`` must check that the entry is still
        purged: it may have been stored again since).

        @return: the number of entries (of ``tenant``) carrying the tag;
            O(1), or O(tenants) for every tenant.
        """
        self._bump(self._latest, tag, tenant, seq)
        if not stale:
            self._bump(self._drops, tag, tenant, seq)
        found = self._detach(tenant, tag, stale)
        n = 0
        for held in found:
            n += _count(held)
            if not stale:
                self._sweep(_Sweep(_keys(held), reap))
        return n

    def _detach(self, tenant: str | None, tag: str, keep: bool) -> list[_Held]:
        """
        Return the entries of ``tenant`` (or every tenant) carrying ``tag``,
        taken out of the index unless ``keep``.  O(1) for one tenant.
        """
        members = self._members
        held = members.get(tag)
        if held is None:
            return []
        if isinstance(held, dict):
            if tenant is None:
                if not keep:
                    del members[tag]
                return list(held.values())
            mine = held.get(tenant) if keep else held.pop(tenant, None)
            if mine is None:
                return []
            if not keep and len(held) <= 1:
                if held:
                    members[tag] = next(iter(held.values()))
                else:
                    del members[tag]
            return [mine]
        if tenant is not None and _tenant(held) != tenant:
            return []
        if not keep:
            del members[tag]
        return [held]

    def _sweep(self, sweep: _Sweep) -> None:
        self._sweeps.append(sweep)
        if self._clock is None:
            self._walk()
        elif not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._walk)

    def _bump(self, table: dict[str, dict[str | None, int]], tag: str, tenant: str | None, seq: int) -> None:
        gens = table.pop(tag, None)
        if gens is None:
            gens = {}
        gens[tenant] = seq
        # re-inserted: the dict is in order of last purge, oldest first
        table[tag] = gens
        if len(table) > MAX_GENERATIONS:
            oldest = next(iter(table))
            self._floor = max(self._floor, *table.pop(oldest).values())

    def _walk(self) -> None:
        """
        Walk up to one batch of purged entries; leave the rest for a later
        reactor turn.
        """
        self._scheduled = False
        budget = self._batch if self._clock is not None else -1
        while self._sweeps and budget != 0:
            sweep = self._sweeps[0]
            reap = sweep.reap
            for key in sweep.keys:
                reap(key)
                budget -= 1
                if budget == 0:
                    break
            else:
                self._sweeps.popleft()
        if self._sweeps and self._clock is not None and not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._walk)

    @property
    def reaping(self) -> bool:
        """
        Whether purges are still walking their entries.
        """
        return bool(self._sweeps)

    def stats(self) -> dict[str, int]:
        """
        Return ``tags`` (distinct tags held) and ``pairs`` ((entry, tag)
        pairs held), for metrics.
        """
        return {"tags": len(self._members), "pairs": self.pairs}
