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
turns, so no request waits on a purge of 100k entries; a refresh marks its
entries stale the same way.

Generations are kept per tenant, at most L{MAX_GENERATIONS} in all (SPEC.md
section 3, v3: what a purge of a tag no entry carries leaves behind is
bounded).  Once a purge's walk is done, its generation only matters to the
fetches begun before it; so forgetting one first finishes the walks up to
it, then refuses the tagged answers of that tenant's fetches begun before it
(a token floor).  Forgetting never drops an entry, and the generation
forgotten is one of the tenant holding the most, never another tenant's
while the purging one holds its share: no number of one tenant's purges
touches another tenant's entries.

The index's memory counts in the store's budget: L{TagIndex.charge}; the
generations are bounded apart from it (about 100 bytes each plus the tag,
for a drop).
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
#: Generations remembered, all tenants together; past this a tenant's
#: oldest is forgotten (see the module's docstring): never an entry
#: dropped, only that tenant's older fetches' tagged answers not stored.
MAX_GENERATIONS = 65536
#: Tenants whose token floor is remembered; past this the oldest floor
#: goes to the floor of every tenant (a tagged answer of a fetch begun
#: before it is not stored, whatever its tenant).
MAX_FLOORS = 65536


#: The entries carrying a tag within one tenant: the key of the only one
#: (the common ``object:{id}`` case costs no set), or a set of keys.
_Held = CacheKey | set[CacheKey]

#: The generation of a tag: the sequence of its latest purge when that was
#: a drop (the common case: one int), else ``(latest, latest drop or 0)``.
_Gen = int | tuple[int, int]


def _latest(gen: _Gen) -> int:
    return gen if gen.__class__ is int else gen[0]  # type: ignore[index,return-value]


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

    __slots__ = ("keys", "reap", "seq")

    def __init__(self, keys: Iterator[CacheKey], reap: Callable[[CacheKey], Any], seq: int) -> None:
        self.keys = keys
        self.reap = reap
        self.seq = seq


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
        #: tenant (None: every tenant) -> tag -> generation, in order of
        #: last purge, oldest first
        self._gens: dict[str | None, dict[str, _Gen]] = {}
        #: generations held, all tenants together
        self._held = 0
        #: a tenant holding at least its share of generations (a guess,
        #: checked before use)
        self._largest: str | None = None
        #: tenant -> its fetches begun before this store no tagged answer
        #: (generations forgotten), oldest change first
        self._floors: dict[str, int] = {}
        #: the same for every tenant
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
        if seq is None:
            return DROPPED
        gens = self._gens
        if not gens:
            return FRESH
        mine = gens.get(key.tenant)
        every = gens.get(None)
        if every is None:
            # the hit path: one lookup per tag, as long as none was purged
            if mine is None:
                return FRESH
            for tag in tags:
                if tag in mine:
                    break
            else:
                return FRESH
        verdict = FRESH
        for table in (mine, every):
            if table is None:
                continue
            for tag in tags:
                gen = table.get(tag)
                if gen is None:
                    continue
                if gen.__class__ is int:
                    if gen > seq:  # type: ignore[operator]
                        return DROPPED
                    continue
                latest, drop = gen  # type: ignore[misc]
                if drop > seq:
                    return DROPPED
                if latest > seq:
                    verdict = STALE
        return verdict

    def refused(self, tenant: str, tags: tuple[str, ...], token: int) -> bool:
        """
        Return whether an answer carrying ``tags``, fetched with ``token``,
        must not be stored: one of its tags was purged since.
        """
        if token < self._floor or token < self._floors.get(tenant, 0):
            return True
        gens = self._gens
        for table in (gens.get(tenant), gens.get(None)):
            if table is None:
                continue
            for tag in tags:
                gen = table.get(tag)
                if gen is not None and _latest(gen) > token:
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
        stale instead of dropping them.  The entries are then walked in
        batches, one per reactor turn, calling ``reap`` on each: it drops
        or marks stale what L{check} says (the entry may have been stored
        again since), and changes the index only through L{remove}.

        @return: the number of entries (of ``tenant``) carrying the tag;
            O(1) for a drop, or O(tenants) for every tenant; a refresh
            copies the keys it walks (O(entries carrying the tag)).
        """
        self._bump(tenant, tag, stale, seq)
        found = self._detach(tenant, tag, stale)
        n = 0
        for held in found:
            n += _count(held)
            # a refresh's entries stay in the index, which may change
            # under the walk: it walks a copy
            self._sweep(_Sweep(iter(list(_keys(held))) if stale else _keys(held), reap, seq))
        # only now: forgetting may finish this purge's own walk first
        while self._held > MAX_GENERATIONS:
            self._forget(self._victim(tenant))
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

    def _bump(self, tenant: str | None, tag: str, stale: bool, seq: int) -> None:
        table = self._gens.get(tenant)
        if table is None:
            table = self._gens[tenant] = {}
        old = table.pop(tag, None)
        if old is None:
            self._held += 1
        if not stale:
            table[tag] = seq
        elif old is None:
            table[tag] = (seq, 0)
        else:
            # re-inserted: the table is in order of last purge, oldest first
            table[tag] = (seq, old if old.__class__ is int else old[1])  # type: ignore[index,assignment]

    def _victim(self, tenant: str | None) -> str | None:
        """
        Return the tenant that forgets a generation: the purging one while
        it holds at least its share (the average), else one that does.
        """
        gens = self._gens
        if len(gens.get(tenant, ())) * len(gens) >= self._held:
            return tenant
        largest = self._largest
        table = gens.get(largest)
        if table is None or len(table) * len(gens) < self._held:
            largest = self._largest = max(gens, key=lambda t: len(gens[t]))
        return largest

    def _forget(self, tenant: str | None) -> None:
        """
        Forget the oldest generation of ``tenant``, after the walks of the
        purges up to it: from then on only the fetches begun before it
        could tell, and the token floor refuses their tagged answers.
        """
        table = self._gens[tenant]
        tag = next(iter(table))
        latest = _latest(table[tag])
        self._finish(latest)
        del table[tag]
        self._held -= 1
        if not table:
            del self._gens[tenant]
        if tenant is None:
            self._floor = max(self._floor, latest)
            return
        floors = self._floors
        floors[tenant] = max(floors.pop(tenant, 0), latest)
        if len(floors) > MAX_FLOORS:
            oldest = next(iter(floors))
            self._floor = max(self._floor, floors.pop(oldest))

    def _finish(self, seq: int) -> None:
        """
        Walk to their end the purges up to sequence ``seq`` (they are
        queued in order of sequence).
        """
        sweeps = self._sweeps
        while sweeps and sweeps[0].seq <= seq:
            sweep = sweeps.popleft()
            reap = sweep.reap
            for key in sweep.keys:
                reap(key)

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

    @property
    def generations(self) -> int:
        """
        The generations held, all tenants together (at most
        L{MAX_GENERATIONS}).
        """
        return self._held

    def stats(self) -> dict[str, int]:
        """
        Return ``tags`` (distinct tags held) and ``pairs`` ((entry, tag)
        pairs held), for metrics.
        """
        return {"tags": len(self._members), "pairs": self.pairs}
