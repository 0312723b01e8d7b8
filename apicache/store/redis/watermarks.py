"""
The event watermarks of a ``group``'s instances, shared through Redis
(SPEC.md section 5, bounded staleness): one hash, partition → the latest
W_p any instance vouched for, in Redis's own clock (``TIME``), merged with
max.

Instances' clocks differ; Redis's is the one they share.  Each exchange
reads Redis's clock along with the marks and brackets the offset between
the two clocks by the call's round trip; marks are converted in the
direction that makes them earlier, never later, so a slow round trip costs
freshness, never correctness.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from apicache.events.watermark import Partition
from apicache.store.redis.scripts import WATERMARKS_MERGE, WATERMARKS_READ

__all__ = ["RedisWatermarks"]


def _field(p: Partition) -> str:
    return f"{p[0]}:{p[1]}"


def _partition(field: bytes | str) -> Partition | None:
    text = field.decode("utf-8", "replace") if isinstance(field, bytes) else field
    topic, _, number = text.rpartition(":")
    try:
        return (topic, int(number))
    except ValueError:
        return None


class RedisWatermarks:
    """
    A L{apicache.events.watermark.WatermarkExchange} over one Redis hash.

    @param run_script: ``(script, keys, args)`` → a Deferred firing with the
        script's reply (the store's call, with its timeout and errors).
    @param key: the hash (one per consumer group).
    @param is_live: whether this instance's invalidation subscription is up.
    """

    def __init__(
        self,
        run_script: Callable[[str, list[str], list[Any]], Deferred[Any]],
        key: str,
        clock: IReactorTime,
        is_live: Callable[[], bool],
    ) -> None:
        self._run = run_script
        self.key = key
        self.clock = clock
        self._is_live = is_live
        #: bounds on (Redis's clock − ours), from the last read
        self._offset: tuple[float, float] | None = None

    def is_live(self) -> bool:
        """
        Return whether this instance's invalidation subscription is up.
        """
        return self._is_live()

    def fetch(self) -> Deferred[dict[Partition, float]]:
        """
        Fires with every partition's merged mark as a local time, taken as
        early as the round trip allows; errbacks with the store's error.
        """
        return Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> dict[Partition, float]:
        sent = self.clock.seconds()
        reply = await self._run(WATERMARKS_READ, [self.key], [])
        received = self.clock.seconds()
        redis_now = float(reply[0]) + float(reply[1]) / 1e6
        # TIME was read somewhere between sending and receiving
        low, high = redis_now - received, redis_now - sent
        self._offset = (low, high)
        flat = reply[2]
        marks: dict[Partition, float] = {}
        for i in range(0, len(flat) - 1, 2):
            p = _partition(flat[i])
            if p is not None:
                # the largest offset makes the mark earliest
                marks[p] = float(flat[i + 1]) - high
        return marks

    def publish(self, marks: Mapping[Partition, float]) -> Deferred[None]:
        """
        Merge ``marks`` (local times) into the hash, each field keeping the
        larger.  Fires when done; errbacks with the store's error.
        """
        return Deferred.fromCoroutine(self._publish(dict(marks)))

    async def _publish(self, marks: dict[Partition, float]) -> None:
        if self._offset is None:
            await self._fetch()
        assert self._offset is not None
        # the smallest offset makes the mark earliest
        low = self._offset[0]
        args: list[Any] = []
        for p, at in sorted(marks.items()):
            if math.isfinite(at):
                args += [_field(p), f"{at + low:.6f}"]
        if args:
            await self._run(WATERMARKS_MERGE, [self.key], args)
