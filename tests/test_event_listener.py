"""
The listener service without a broker.

Its life cycle runs the real consumer thread (nothing listens at its
bootstrap address) with a fake reactor that collects what the thread hands
over.  What the consumer thread does with its consumer (offsets, seeks,
commits, readiness from librdkafka's callbacks, tokens) is driven here
directly, from the test's thread, with a fake consumer and a
:class:`~twisted.internet.task.Clock` for a reactor: no sleeping.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from listener_support import CONFIG, event, kafka_config
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from zope.interface import implementer

from apicache.cache.registry import CacheRegistry
from apicache.events.consumer import LibrdkafkaLog
from apicache.events.decoding import EventDecoder
from apicache.events.handling import EventHandler
from apicache.events.kafka import EventListenerService
from apicache.store import MemoryStore
from apicache.testing import FakeConsumer, FakeMessage, FlakyInvalidator, ImmediateClock


@implementer(IReactorFromThreads)
class ThreadCollectingClock(Clock):
    """A Clock that also takes calls from other threads, to run later."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.handed.append((f, args, kwargs))

    def run_handed(self) -> None:
        handed, self.handed = self.handed, []
        for f, args, kwargs in handed:
            f(*args, **kwargs)


def is_log(handed: Callable[..., Any], method: Callable[..., Any]) -> bool:
    """
    Whether a call handed to the reactor is a log call of kind ``method``
    (``Logger.warn``...).  ``svc.log`` is a new Logger at each access (a
    descriptor), so its bound methods never compare equal.
    """
    return getattr(handed, "__func__", None) is method


class FakeCredentials:
    username = "client-id"

    def __init__(self) -> None:
        self.ready: Deferred[str] = Deferred()
        self.subscribers: list[Callable[[str], None]] = []

    def when_ready(self) -> Deferred[str]:
        return self.ready

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self.subscribers.append(callback)


def listener(reactor: Clock, credentials: Any = None) -> EventListenerService:
    registry = CacheRegistry(MemoryStore(1 << 20), None, reactor, [], ())  # type: ignore[arg-type]
    return EventListenerService(kafka_config(), EventHandler(EventDecoder((), ()), registry, reactor), reactor, "host", credentials)


def driven(invalidator: Any = None, mode: str = "broadcast") -> tuple[EventListenerService, ImmediateClock]:
    """A listener whose consumer-thread methods the test calls itself."""
    clock = ImmediateClock()
    clock.advance(1000)
    handler = EventHandler(EventDecoder(CONFIG.events, CONFIG.routes), invalidator or FlakyInvalidator(), clock)
    return EventListenerService(kafka_config(mode), handler, clock, "host"), clock


# --- life cycle, with the real consumer thread -----------------------------------


def test_the_consumer_waits_for_the_first_token() -> None:
    reactor = ThreadCollectingClock()
    creds = FakeCredentials()
    svc = listener(reactor, creds)
    svc.startService()
    assert svc._thread is None
    creds.ready.callback("token-1")
    assert svc._thread is not None and svc._thread.is_alive()
    assert svc.settings["sasl.password"] == "token-1"
    stopped = svc.stopService()
    svc._thread.join(5)
    assert not svc._thread.is_alive()
    failures = [args for f, args, _ in reactor.handed if is_log(f, Logger.failure)]
    assert failures == [], "the consumer thread hit an error"
    reactor.run_handed()
    assert stopped.called
    assert reactor.getDelayedCalls() == [], "the stop timeout was cancelled"
    assert not svc.is_ready()


def test_a_renewed_token_is_handed_to_the_consumer_before_its_next_poll() -> None:
    reactor = ThreadCollectingClock()
    creds = FakeCredentials()
    svc = listener(reactor, creds)
    svc.startService()
    for renewed in creds.subscribers:
        renewed("token-2")
    consumer = FakeConsumer()
    svc.loop.poll_once(consumer)
    assert consumer.credentials == [("client-id", "token-2")]
    svc.loop.poll_once(consumer)
    assert consumer.credentials == [("client-id", "token-2")], "handed over once"
    svc.stopService()


def test_stopping_before_the_first_token_starts_nothing() -> None:
    reactor = ThreadCollectingClock()
    creds = FakeCredentials()
    svc = listener(reactor, creds)
    svc.startService()
    assert svc.stopService().called
    creds.ready.callback("late")
    assert svc._thread is None


def test_stop_fires_within_five_seconds_even_if_the_thread_hangs() -> None:
    reactor = ThreadCollectingClock()
    svc = listener(reactor)
    svc.startService()
    stopped = svc.stopService()
    # the thread's own "finished" call is never run: only the timer can fire it
    reactor.advance(4.9)
    assert not stopped.called
    reactor.advance(0.1)
    assert stopped.called
    assert stopped.result is None
    assert svc._thread is not None
    svc._thread.join(5)
    reactor.run_handed()  # the thread's late "finished" changes nothing
    assert stopped.result is None


# --- offsets -----------------------------------------------------------------------


def test_offsets_are_stored_only_for_messages_applied_or_skipped() -> None:
    invalidator = FlakyInvalidator("bad")
    svc, _ = driven(invalidator)
    eof = KafkaError(KafkaError._PARTITION_EOF)
    consumer = FakeConsumer(
        [
            FakeMessage(0, 5, event("1")),
            FakeMessage(0, 6, b"not an event"),
            FakeMessage(1, 3, event("2")),
            FakeMessage(1, 4, error=eof),
            FakeMessage(0, 7, event("bad")),
            FakeMessage(1, 5, event("3")),
            FakeMessage(0, 8, event("4")),
        ]
    )
    # the retry pause is the thread's own Event.wait: with the stop flag
    # set it returns at once
    svc.loop.stop()
    svc.loop.poll_once(consumer)
    assert consumer.stored == [("t", 0, 7), ("t", 1, 4)]
    # back to the first message not applied, in each partition after it
    assert consumer.seeks == [("t", 0, 7), ("t", 1, 5)]
    assert [a[3] for a in invalidator.applied] == [("1",), ("2",)]
    assert svc.handler.info() | {"last_applied_at": None} == {
        "received": 4,
        "applied": 2,
        "skipped": 1,
        "failed": 1,
        "last_applied_at": None,
    }
    assert list(svc.handler.lags) == [10.0, 10.0]

    # the store is back: the retried messages apply and their offsets follow
    invalidator.failing.clear()
    consumer.messages = [FakeMessage(0, 7, event("bad")), FakeMessage(1, 5, event("3")), FakeMessage(0, 8, event("4"))]
    svc.loop.poll_once(consumer)
    assert consumer.stored[2:] == [("t", 0, 9), ("t", 1, 6)]
    assert consumer.seeks == [("t", 0, 7), ("t", 1, 5)]
    assert svc.handler.applied == 5


def test_nothing_is_stored_when_nothing_arrived() -> None:
    svc, _ = driven()
    consumer = FakeConsumer([FakeMessage(0, 9, error=KafkaError(KafkaError._PARTITION_EOF))])
    svc.loop.poll_once(consumer)
    svc.loop.poll_once(consumer)
    assert (consumer.stored, consumer.seeks, svc.handler.received) == ([], [], 0)


def test_revocation_commits_and_a_failed_commit_is_logged() -> None:
    svc, _ = driven()
    consumer = FakeConsumer()
    svc.loop.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
    svc.loop.on_revoke(consumer, [TopicPartition("t", 1)])
    assert consumer.commits == 1
    assert svc.links.assigned == ["t:0"]
    # nothing stored yet is not worth a line; a refused commit is
    consumer.commit_error = KafkaError(KafkaError._NO_OFFSET)
    svc.loop.commit(consumer)
    consumer.commit_error = KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "rebalancing")
    warned: list[str] = []
    svc.loop.log = Logger(observer=lambda e: warned.append(formatEvent(e)))  # type: ignore[misc]
    svc.loop.commit(consumer)
    assert consumer.commits == 3
    assert warned == ["kafka: commit failed: rebalancing"]


def test_broadcast_starts_a_new_partition_at_its_end_and_a_known_one_at_the_beginning() -> None:
    svc, _ = driven()
    consumer = FakeConsumer(high=42)
    svc.loop.on_assign(consumer, [TopicPartition("t", 0)])
    assert consumer.assigned == [("t", 0, 42)]
    svc.loop.on_revoke(consumer, [TopicPartition("t", 0)])
    # assigned again without committed offsets (the broker lost them)
    svc.loop.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
    assert consumer.assigned == [("t", 0, OFFSET_BEGINNING), ("t", 1, 42)]
    consumer.committed_offsets = {0: 17}
    svc.loop.on_assign(consumer, [TopicPartition("t", 0)])
    assert consumer.assigned == [("t", 0, 17)], "committed offsets win"


# --- readiness and log lines, from librdkafka's callbacks -----------------------------


def stats(*states: str) -> str:
    return json.dumps({"brokers": {f"b{i}": {"state": s} for i, s in enumerate(states)}})


def test_readiness_follows_the_consumer_callbacks_in_broadcast_mode() -> None:
    svc, _ = driven()
    consumer = FakeConsumer()
    assert not svc.is_ready()
    svc.loop.on_stats(stats("INIT", "UP"))
    assert svc.links.connected and not svc.is_ready(), "connected, not yet assigned"
    svc.loop.on_assign(consumer, [TopicPartition("t", 0)])
    assert svc.is_ready()
    assert svc.info()["events"]["partitions"] == 1
    svc.loop.on_revoke(consumer, [TopicPartition("t", 0)])
    assert not svc.is_ready(), "a broadcast listener without partitions hears nothing"
    svc.loop.on_assign(consumer, [TopicPartition("t", 0)])
    svc.loop.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "down"))
    assert not svc.is_ready()
    assert svc.links.error == "down"
    svc.loop.on_stats(stats("UP"))
    assert svc.is_ready()
    svc.loop.on_stats(stats("DOWN", "CONNECT"))
    assert not svc.is_ready()
    svc.loop.on_stats(stats("UP"))
    svc.loop.on_lost(consumer, [TopicPartition("t", 0)])
    assert not svc.is_ready() and svc.links.assigned == []
    assert svc.info()["events"]["partitions"] == 0


def test_in_group_mode_a_member_without_partitions_is_ready() -> None:
    svc, _ = driven(mode="group")
    consumer = FakeConsumer()
    svc.loop.on_stats(stats("UP"))
    svc.loop.on_assign(consumer, [])
    assert svc.is_ready()
    assert consumer.assigned == [], "group mode keeps the group's offsets"


def test_the_same_kafka_complaint_is_logged_once_in_thirty_seconds() -> None:
    reactor = ThreadCollectingClock()
    svc = listener(reactor)
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "down")

    def warnings() -> int:
        return sum(1 for f, _, _ in reactor.handed if is_log(f, Logger.warn))

    svc.loop.on_error(down)
    svc.loop.on_error(down)
    assert warnings() == 1
    svc.loop.on_error(KafkaError(KafkaError._TRANSPORT, "reset"))
    assert warnings() == 2, "another complaint is logged at once"
    reactor.advance(29.9)
    svc.loop.on_error(down)
    assert warnings() == 2
    reactor.advance(0.1)
    svc.loop.on_error(down)
    assert warnings() == 3
    # librdkafka's own lines: the same rule, debug and connection failures left out
    log = LibrdkafkaLog(svc.loop)
    log.log(30, "%s: broker %s is odd", "ODD", "b1")
    log.log(30, "%s: broker %s is odd", "ODD", "b1")
    log.log(20, "%s: info", "INFO")
    log.log(30, "%s: connect failed", "FAIL")
    assert warnings() == 4
