"""
Handling: decoded messages are applied to the cache on the reactor thread,
one after another, and counted.  No Kafka here: the listener in
:mod:`apicache.events.kafka` hands batches over and stores the offsets of
what was dealt with.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from apicache.cache.invalidator import IInvalidator
from apicache.events.decoding import BadEvent, CacheAction, EventDecoder, excerpt

__all__ = ["EventHandler"]


class EventHandler:
    """
    Applies messages through an L{IInvalidator}, on the reactor thread, and
    counts them.

    @ivar received: messages handed to :meth:`handle`.
    @ivar applied: messages whose every action was applied.
    @ivar skipped: messages that were not events (logged and dropped).
    @ivar failed: attempts to apply that failed (the message is retried).
    @ivar last_applied: ``clock.seconds()`` of the last applied message.
    @ivar lags: seconds from each of the last applied messages' timestamps
        to its application.
    """

    log = Logger()

    def __init__(self, decoder: EventDecoder, registry: IInvalidator, clock: IReactorTime) -> None:
        self.decoder = decoder
        self.registry = registry
        self.clock = clock
        self.received = 0
        self.applied = 0
        self.skipped = 0
        self.failed = 0
        self.last_applied: float | None = None
        self.lags: deque[float] = deque(maxlen=10000)

    def handle(self, value: bytes | None, timestamp: float | None = None, where: str = "") -> Deferred[bool]:
        """
        Decode and apply one message.  Fires with ``True`` once applied, or
        ``False`` if the message was skipped (not an event); errbacks when
        an action could not be applied (the store was unreachable): the
        message should be retried.

        @param timestamp: the message's timestamp (seconds since the epoch),
            for the produce-to-applied lag.
        @param where: topic/partition/offset, for log lines.
        """
        self.received += 1
        try:
            actions = self.decoder.decode(value)
        except BadEvent as e:
            self.skipped += 1
            self.log.warn(
                "skipped a message that is not an event ({why}): {excerpt}",
                why=str(e),
                excerpt=excerpt(value),
                at=where,
                size=len(value or b""),
            )
            return succeed(False)
        return Deferred.fromCoroutine(self._apply(actions, timestamp, where))

    async def _apply(self, actions: list[CacheAction], timestamp: float | None, where: str) -> bool:
        try:
            for a in actions:
                if a.tags:
                    if a.action == "refresh":
                        n = await self.registry.refresh_tags(a.tenant, a.tags, "event")
                    else:
                        n = await self.registry.invalidate_tags(a.tenant, a.tags, "event")
                    self.log.debug(
                        "event: {action} tags {tags} for {tenant}: {n} entries",
                        action=a.action,
                        tags=" ".join(a.tags),
                        tenant=a.tenant or "every tenant",
                        n=n,
                        at=where,
                    )
                    continue
                if a.action == "refresh":
                    n = await self.registry.refresh(a.tenant, a.route, a.params)
                else:
                    n = await self.registry.invalidate(a.tenant, a.route, a.params)
                self.log.debug(
                    "event: {action} {route} {params} for {tenant}: {n} entries",
                    action=a.action,
                    route=a.route,
                    params=",".join(a.params),
                    tenant=a.tenant or "every tenant",
                    n=n,
                    at=where,
                )
        except Exception:
            self.failed += 1
            raise
        now = self.clock.seconds()
        self.applied += 1
        self.last_applied = now
        if timestamp is not None:
            lag = max(0.0, now - timestamp)
            self.lags.append(lag)
            self.log.debug("event applied {lag_ms} ms after it was produced", lag_ms=round(lag * 1000, 3), at=where)
        return True

    def handle_batch(self, batch: Sequence[tuple[bytes | None, float | None, str]]) -> Deferred[int]:
        """
        Apply messages one after another, in order.  Fires with how many
        were dealt with (applied or skipped); that is fewer than
        ``len(batch)`` only if one failed, and the rest were not tried.
        """

        async def run() -> int:
            done = 0
            for value, timestamp, where in batch:
                try:
                    await self.handle(value, timestamp, where)
                except Exception as e:  # noqa: BLE001 - retried later, whatever it was
                    self.log.warn("could not apply an event, will retry: {error}", error=str(e) or repr(e), at=where)
                    break
                done += 1
            return done

        return Deferred.fromCoroutine(run())

    def info(self) -> dict[str, Any]:
        """
        Return the counters, for ``GET /``.
        """
        return {
            "received": self.received,
            "applied": self.applied,
            "skipped": self.skipped,
            "failed": self.failed,
            "last_applied_at": self.last_applied,
        }
