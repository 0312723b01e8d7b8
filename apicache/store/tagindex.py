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
#: Entries a purge walks per reactor turn (about a millisecond's work).
REAP_BATCH = 500
#: Tags whose generations are remembered; past this the oldest is
#: forgotten and every tagged entry stored before it is treated as purged
#: (conservative: a spurious miss, never a purged entry served).
MAX_GENERATIONS = 65536


class _Sweep:
    """
    One purge's walk over the entries that carried its tag, reaping the
    purged tenant's: at most a batch per reactor turn.
    """

    __slots__ = ("keys", "tenant", "reap")

    def __init__(self, keys: Iterator[CacheKey], tenant: str | None, reap: Callable[[CacheKey], Any]) -> None:
        self.keys = keys
        self.tenant = tenant
        self.reap = reap


class TagIndex:
    """
    Tags of the entries of one in-process store.

    An entry is indexed under each of its tags, whatever its tenant: a
    tag's member is the entry's key alone while one entry carries it (the
    common ``object:{id}`` case costs no set), a set of keys once several
    do.  A tenant's purge walks the tag's members and skips other tenants'.

    @param clock: spreads a purge's walk over reactor turns; ``None`` walks
        at once (tests).
    """

    def __init__(self, clock: IReactorTime | None = None, batch: int = REAP_BATCH) -> None:
        self._clock = clock
        self._batch = batch
        #: tag -> the key of the one entry carrying it, or their set
        self._members: dict[str, CacheKey | set[CacheKey]] = {}
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
        for tag in tags:
            held = members.get(tag)
            if held is None:
                members[tag] = key
            elif isinstance(held, set):
                held.add(key)
            elif held != key:
                members[tag] = {held, key}
        self.pairs += len(tags)

    def remove(self, key: CacheKey, tags: tuple[str, ...]) -> None:
        """
        Forget an entry (dropped, evicted, expired or replaced).
        """
        if self._seq.pop(key, None) is None:
            return
        self.pairs -= len(tags)
        members = self._members
        for tag in tags:
            held = members.get(tag)
            if held is None:
                continue
            if isinstance(held, set):
                held.discard(key)
                if len(held) == 1:
                    members[tag] = next(iter(held))
            elif held == key:
                del members[tag]

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

        @return: the number of entries (of ``tenant``) carrying the tag.
            O(1) for every tenant; a tenant's count walks the tag's members
            once, in C (about 5 ms for 100k).
        """
        self._bump(self._latest, tag, tenant, seq)
        if not stale:
            self._bump(self._drops, tag, tenant, seq)
        held = self._members.get(tag)
        if held is None:
            return 0
        if not isinstance(held, set):
            if tenant is not None and held.tenant != tenant:
                return 0
            if not stale:
                self._sweep(_Sweep(iter((held,)), tenant, reap))
            return 1
        if tenant is None:
            n = len(held)
            if not stale:
                # nobody else's: detached whole, walked as it is
                del self._members[tag]
                self._sweep(_Sweep(iter(held), None, reap))
            return n
        # a snapshot: reaping changes the set
        snapshot = list(held)
        n = sum([1 for k in snapshot if k.tenant == tenant])
        if n and not stale:
            self._sweep(_Sweep(iter(snapshot), tenant, reap))
        return n

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
            tenant, reap = sweep.tenant, sweep.reap
            for key in sweep.keys:
                budget -= 1
                if tenant is None or key.tenant == tenant:
                    reap(key)
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
