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
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from apicache.keys import CacheKey

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
#: Entries dropped per reactor turn by a purge.
REAP_BATCH = 2000
#: Tags whose generations are remembered; past this the oldest is
#: forgotten and every tagged entry stored before it is treated as purged
#: (conservative: a spurious miss, never a purged entry served).
MAX_GENERATIONS = 65536


class TagIndex:
    """
    Tags of the entries of one in-process store.

    @param clock: schedules the batched drops of a purge; ``None`` drops
        every entry at once (tests).
    """

    def __init__(self, clock: IReactorTime | None = None, batch: int = REAP_BATCH) -> None:
        self._clock = clock
        self._batch = batch
        #: tag -> tenant -> keys of the entries carrying it
        self._members: dict[str, dict[str, set[CacheKey]]] = {}
        #: tagged entry -> the sequence it was stored under
        self._seq: dict[CacheKey, int] = {}
        #: tag -> tenant (None: every tenant) -> latest purge (drop or stale)
        self._latest: dict[str, dict[str | None, int]] = {}
        #: tag -> tenant (None: every tenant) -> latest drop
        self._drops: dict[str, dict[str | None, int]] = {}
        self._floor = 0
        self._reaping: deque[tuple[Iterable[CacheKey], Callable[[CacheKey], Any]]] = deque()
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
            by_tenant = members.get(tag)
            if by_tenant is None:
                members[tag] = {tenant: {key}}
                continue
            keys = by_tenant.get(tenant)
            if keys is None:
                by_tenant[tenant] = {key}
            else:
                keys.add(key)
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
            by_tenant = members.get(tag)
            if by_tenant is None:
                continue
            keys = by_tenant.get(tenant)
            if keys is None:
                continue
            keys.discard(key)
            if not keys:
                del by_tenant[tenant]
                if not by_tenant:
                    del members[tag]

    def clear(self) -> None:
        """
        Forget every entry (the store dropped them all); generations stay.
        """
        self._members.clear()
        self._seq.clear()
        self._reaping.clear()
        self.pairs = 0

    def carrying(self, tenant: str | None, tag: str) -> int:
        """
        Return how many entries (of ``tenant``, or of every tenant) carry ``tag``.
        """
        by_tenant = self._members.get(tag, {})
        if tenant is None:
            return sum(len(keys) for keys in by_tenant.values())
        return len(by_tenant.get(tenant, ()))

    # -- purges --------------------------------------------------------------

    def purge(self, tenant: str | None, tag: str, stale: bool, seq: int, reap: Callable[[CacheKey], Any]) -> int:
        """
        Purge ``tag`` (of ``tenant``, or of every tenant) as of sequence
        ``seq``: at once for every later check; ``stale`` marks the entries
        stale instead of dropping them.  The entries' memory is freed by
        calling ``reap`` on each, in batches (``reap`` must check that the
        entry is still purged: it may have been stored again since).

        @return: the number of entries that carried the tag.
        """
        self._bump(self._latest, tag, tenant, seq)
        if stale:
            return self.carrying(tenant, tag)
        self._bump(self._drops, tag, tenant, seq)
        if tenant is None:
            sets = list(self._members.pop(tag, {}).values())
        else:
            by_tenant = self._members.get(tag)
            found = by_tenant.pop(tenant, None) if by_tenant is not None else None
            if by_tenant is not None and not by_tenant:
                del self._members[tag]
            sets = [found] if found else []
        n = 0
        for keys in sets:
            n += len(keys)
            self._reaping.append((iter(keys), reap))
        if not self._scheduled:
            self._reap()
        return n

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

    def _reap(self) -> None:
        """
        Drop up to one batch of purged entries; schedule the rest for a
        later reactor turn.
        """
        self._scheduled = False
        budget = self._batch if self._clock is not None else -1
        while self._reaping and budget != 0:
            keys, reap = self._reaping[0]
            for key in keys:
                reap(key)
                budget -= 1
                if budget == 0:
                    break
            else:
                self._reaping.popleft()
        if self._reaping and self._clock is not None and not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._reap)

    @property
    def reaping(self) -> bool:
        """
        Whether purged entries are still waiting to be dropped.
        """
        return bool(self._reaping)

    def stats(self) -> dict[str, int]:
        """
        Return ``tags`` (distinct tags held) and ``pairs`` ((entry, tag)
        pairs held), for metrics.
        """
        return {"tags": len(self._members), "pairs": self.pairs}
