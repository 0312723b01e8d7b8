"""
The event watermark W of bounded staleness (SPEC.md section 5).

W is a local time before which every event appended to the configured
topics has been applied to the cache.  It is kept per partition (W_p) and
W is their minimum.  The event listener advances W_p; the serving rule reads
it: an entry of a route with ``max_staleness`` > 0, fetched by an upstream
request sent at F, is served from the cache only while
``now - max(F, W) <= max_staleness`` (F alone for entries fetched before the
listener last skipped messages).

Pure arithmetic over an injected clock: no Kafka, no Redis, no reactor
thread rules.  A leaf module, so that both the cache (reads W) and the
event listener (writes W_p) can import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

__all__ = ["NEVER", "Partition", "Watermark", "WatermarkExchange", "judge_end_offsets"]

#: W_p before anything is vouched for: −∞.
NEVER = -math.inf

#: (topic, partition number)
Partition = tuple[str, int]


class WatermarkExchange(Protocol):
    """
    Where the instances of a ``group`` share their partition watermarks: the
    shared store (Redis).  Values cross it stamped with the store's own
    clock; this side speaks local times only.
    """

    def publish(self, marks: Mapping[Partition, float], /) -> Deferred[None]:
        """
        Merge ``marks`` (local times) into the shared ones, each partition
        keeping the larger.  Fires when done; errbacks when the store is
        unreachable.
        """

    def fetch(self) -> Deferred[dict[Partition, float]]:
        """
        Fires with every instance's merged marks, converted to local times
        (never later than the truth); errbacks when the store is unreachable.
        """

    def is_live(self) -> bool:
        """
        Return whether this instance's invalidation subscription is up:
        only then do the other instances' marks vouch for what is held
        here.
        """


class Watermark:
    """
    The event watermark W and the per-partition W_p behind it.

    @param group: ``group`` mode (partitions are shared out between
        instances) rather than ``broadcast`` (every instance holds every
        partition).
    @param shared: the store is shared (Redis): in ``group`` mode the other
        instances' partitions count through their published marks.  With a
        store of its own, an instance's cache never sees their events, so
        those partitions count as −∞.
    @param max_clock_skew: seconds taken off LogAppendTime timestamps (the
        broker's clock, not ours).
    """

    def __init__(self, clock: IReactorTime, *, group: bool = False, shared: bool = False, max_clock_skew: float = 1.0) -> None:
        self.clock = clock
        self.group = group
        self.shared = shared
        self.max_clock_skew = max_clock_skew
        #: every partition of the configured topics, as metadata lists them
        self.partitions: frozenset[Partition] = frozenset()
        #: partitions this instance consumes now
        self.assigned: set[Partition] = set()
        #: W_p as vouched for by this instance
        self.local: dict[Partition, float] = {}
        #: W_p as published by every instance (group mode, shared store)
        self.remote: dict[Partition, float] = {}
        #: whether the remote marks vouch for this instance's cache now
        self.remote_live: Callable[[], bool] = lambda: False
        #: when the listener last skipped messages (−∞: never)
        self.skipped_at = NEVER
        # W as last computed: (changes seen, remote marks live?, W); the
        # serving rule reads W on every hit of a bounded route
        self._changes = 0
        self._memo: tuple[int, bool, float] = (-1, False, NEVER)

    # -- what the listener tells ------------------------------------------------

    def set_partitions(self, partitions: Iterable[Partition]) -> None:
        """
        Take the partitions of the configured topics, as topic metadata
        lists them now.
        """
        self.partitions = frozenset(partitions)
        self._changes += 1

    def assign(self, partitions: Iterable[Partition]) -> None:
        """
        Note partitions assigned to this instance.
        """
        self.assigned.update(partitions)
        self._changes += 1

    def revoke(self, partitions: Iterable[Partition] | None = None) -> None:
        """
        Note partitions taken from this instance (``None``: all of them).
        """
        if partitions is None:
            self.assigned.clear()
        else:
            self.assigned.difference_update(partitions)
        self._changes += 1

    def vouch(self, partitions: Iterable[Partition], sent_at: float) -> None:
        """
        Advance W_p to ``sent_at`` (never back) for each partition whose
        end-offset query, sent at ``sent_at``, was answered with an offset
        not beyond what had been applied.
        """
        for p in partitions:
            if sent_at > self.local.get(p, NEVER):
                self.local[p] = sent_at
                self._changes += 1

    def appended(self, partition: Partition, append_time: float) -> None:
        """
        Take the LogAppendTime (broker clock, seconds) of the newest applied
        message of ``partition``: less ``max_clock_skew``, it vouches too.
        """
        self.vouch((partition,), append_time - self.max_clock_skew)

    def skip(self, at: float) -> None:
        """
        Note that the listener skipped messages at ``at``: entries fetched
        before it are judged by their fetch time alone.
        """
        self.skipped_at = max(self.skipped_at, at)

    def merge_remote(self, marks: Mapping[Partition, float]) -> None:
        """
        Take marks read from the exchange (local times), keeping the larger.
        """
        for p, at in marks.items():
            if at > self.remote.get(p, NEVER):
                self.remote[p] = at
                self._changes += 1

    # -- what the serving rule reads ----------------------------------------------

    def of(self, partition: Partition) -> float:
        """
        Return W_p as it counts for W now.
        """
        local = self.local.get(partition, NEVER)
        if not self.group:
            return local
        if self.shared:
            # what this instance applied stays applied in the shared store,
            # whoever holds the partition now
            if self.remote_live():
                return max(local, self.remote.get(partition, NEVER))
            return local
        return local if partition in self.assigned else NEVER

    def value(self) -> float:
        """
        Return W: the minimum of W_p over every partition of the configured
        topics; −∞ while no partition is known.
        """
        live = self.group and self.shared and self.remote_live()
        changes, was_live, w = self._memo
        if changes == self._changes and was_live == live:
            return w
        w = min(self.of(p) for p in self.partitions) if self.partitions else NEVER
        self._memo = (self._changes, live, w)
        return w

    def lag(self) -> float | None:
        """
        Return now − W in seconds, or ``None`` while W is −∞.
        """
        w = self.value()
        if w == NEVER:
            return None
        return max(0.0, self.clock.seconds() - w)

    def vouched(self, fetched_at: float) -> float:
        """
        Return the time up to which an entry fetched by an upstream request
        sent at ``fetched_at`` is known to be current: max(F, W), or F alone
        when the entry was fetched before the listener last skipped
        messages.
        """
        if fetched_at < self.skipped_at:
            return fetched_at
        return max(fetched_at, self.value())

    def within(self, fetched_at: float, max_staleness: float) -> bool:
        """
        Return whether an entry fetched at ``fetched_at`` may still be
        served from the cache under ``max_staleness`` seconds.
        """
        return self.clock.seconds() - self.vouched(fetched_at) <= max_staleness


def judge_end_offsets(
    applied: MutableMapping[Partition, int], ends: Iterable[tuple[Partition, int]]
) -> tuple[list[Partition], list[Partition]]:
    """
    Judge the answers of an end-offset query against the offsets applied.

    A partition whose end offset is not beyond the offset up to which its
    messages were applied is vouched for.  One whose end offset is I{below}
    it lost or truncated its log (SPEC.md section 5, v3): that is a skip,
    and the offset applied no longer says anything about the new log, so it
    is forgotten (dropped from C{applied}) until the listener applies a
    message of the partition or reaches its end again.  Before, the old
    offset went on vouching for every later query while the new log's
    first messages, invalidations among them, were still to be applied.

    @param applied: per partition, the offset up to which messages were
        applied (the listener's own; truncated partitions are removed).
    @param ends: (partition, end offset) answers; a negative offset (no
        answer) and a partition with nothing applied are left out.
    @return: (partitions vouched for, partitions whose log was truncated).
    """
    vouched: list[Partition] = []
    truncated: list[Partition] = []
    for p, end in ends:
        done = applied.get(p)
        if done is None or end < 0:
            continue
        if end <= done:
            if end < done:
                truncated.append(p)
                del applied[p]
            else:
                vouched.append(p)
    return vouched, truncated
