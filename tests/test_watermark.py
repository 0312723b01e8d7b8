"""
The event watermark W of bounded staleness (SPEC.md section 5): its
arithmetic over a Clock, the lag monitor's log lines and exchange, and how
the listener's consumer thread advances it (with a fake consumer, driven
from the test's thread: no broker, no sleeping).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, KafkaError, TopicPartition
from listener_support import CONFIG, event, kafka_config
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from apicache.events.consumer import LibrdkafkaLog
from apicache.events.decoding import EventDecoder
from apicache.events.handling import EventHandler
from apicache.events.kafka import EventListenerService
from apicache.events.lag import LagMonitor
from apicache.events.watermark import NEVER, Partition, Watermark
from apicache.store.interface import StoreUnavailable
from apicache.testing import EndOffsetConsumer, FakeConsumer, FakeMessage, FlakyInvalidator, ImmediateClock

P0: Partition = ("t", 0)
P1: Partition = ("t", 1)


def clock_at(t: float) -> Clock:
    clock = Clock()
    clock.advance(t)
    return clock


def two_partitions(clock: Clock, **kwargs: Any) -> Watermark:
    w = Watermark(clock, **kwargs)
    w.set_partitions([P0, P1])
    w.assign([P0, P1])
    return w


# --- the arithmetic -------------------------------------------------------------------


def test_w_starts_at_minus_infinity_and_the_lag_is_unknown() -> None:
    clock = clock_at(1000)
    w = two_partitions(clock)
    assert w.value() == NEVER
    assert w.lag() is None
    # nothing vouched for: an entry is judged by its fetch time alone
    assert w.vouched(990.0) == 990.0
    assert w.within(995.0, 5.0)
    assert not w.within(994.9, 5.0)


def test_w_is_the_minimum_over_every_partition() -> None:
    clock = clock_at(1000)
    w = two_partitions(clock)
    w.vouch([P0], 998.0)
    assert w.value() == NEVER, "partition 1 vouches for nothing yet"
    w.vouch([P1], 997.0)
    assert w.value() == 997.0
    w.vouch([P1], 999.0)
    assert w.value() == 998.0
    assert w.lag() == 2.0


def test_w_p_never_decreases() -> None:
    w = two_partitions(clock_at(1000))
    w.vouch([P0, P1], 999.0)
    w.vouch([P0, P1], 990.0)
    assert w.local == {P0: 999.0, P1: 999.0}
    assert w.value() == 999.0


def test_no_partition_listed_vouches_for_nothing() -> None:
    w = Watermark(clock_at(1000))
    w.assign([P0])
    w.vouch([P0], 999.0)
    assert w.value() == NEVER, "the topics' partitions are not known yet"
    w.set_partitions([P0])
    assert w.value() == 999.0
    # a partition added to the topic starts at −∞
    w.set_partitions([P0, P1])
    assert w.value() == NEVER


def test_log_append_time_counts_less_the_clock_skew() -> None:
    w = two_partitions(clock_at(1000), max_clock_skew=1.5)
    w.appended(P0, 999.0)
    w.vouch([P1], 999.5)
    assert w.value() == 997.5
    w.appended(P0, 990.0)
    assert w.of(P0) == 997.5, "an older append time changes nothing"


def test_the_serving_rule_uses_the_later_of_fetch_time_and_w() -> None:
    clock = clock_at(1000)
    w = two_partitions(clock)
    w.vouch([P0, P1], 1000.0)
    clock.advance(10)  # now 1010, W 1000
    assert w.vouched(990.0) == 1000.0
    assert w.vouched(1005.0) == 1005.0
    assert w.within(990.0, 10.0)
    assert not w.within(990.0, 9.9)
    assert w.within(1001.0, 9.0)


def test_entries_fetched_before_a_skip_are_judged_by_their_fetch_time_alone() -> None:
    clock = clock_at(1000)
    w = two_partitions(clock)
    w.skip(995.0)
    w.vouch([P0, P1], 999.0)
    assert w.vouched(994.0) == 994.0
    assert w.vouched(995.0) == 999.0
    w.skip(990.0)
    assert w.skipped_at == 995.0, "the latest skip counts"


# --- group mode -------------------------------------------------------------------------


def test_group_mode_with_a_store_of_its_own_counts_other_partitions_as_minus_infinity() -> None:
    w = two_partitions(clock_at(1000), group=True, shared=False)
    w.vouch([P0, P1], 999.0)
    w.merge_remote({P0: 1000.0, P1: 1000.0})
    w.remote_live = lambda: True
    assert w.value() == 999.0, "remote marks never count without a shared store"
    w.revoke([P1])
    assert w.value() == NEVER
    w.assign([P1])
    assert w.value() == 999.0
    w.revoke(None)
    assert w.value() == NEVER


def test_group_mode_with_a_shared_store_counts_remote_marks_while_the_subscription_is_live() -> None:
    live = [False]
    w = Watermark(clock_at(1000), group=True, shared=True)
    w.remote_live = lambda: live[0]
    w.set_partitions([P0, P1])
    w.assign([P0])
    w.vouch([P0], 999.0)
    w.merge_remote({P1: 998.0, P0: 990.0})
    assert w.value() == NEVER, "the subscription is down: partition 1 is not vouched for"
    live[0] = True
    assert w.value() == 998.0
    w.merge_remote({P1: 997.0})
    assert w.remote[P1] == 998.0, "merged with max"
    live[0] = False
    # what this instance applied stays applied in the shared store
    w.revoke([P0])
    w.vouch([P1], 999.5)
    assert w.value() == 999.0


# --- the lag monitor -------------------------------------------------------------------


class Exchange:
    """A L{WatermarkExchange} over a dict, as Redis would keep it."""

    def __init__(self) -> None:
        self.marks: dict[Partition, float] = {}
        self.live = True
        self.down = False
        self.published: list[dict[Partition, float]] = []

    def publish(self, marks: Mapping[Partition, float]) -> Deferred[None]:
        if self.down:
            return fail(StoreUnavailable("away"))
        self.published.append(dict(marks))
        for p, at in marks.items():
            self.marks[p] = max(at, self.marks.get(p, NEVER))
        return succeed(None)

    def fetch(self) -> Deferred[dict[Partition, float]]:
        if self.down:
            return fail(StoreUnavailable("away"))
        return succeed(dict(self.marks))

    def is_live(self) -> bool:
        return self.live


def collecting(monitor: LagMonitor) -> list[str]:
    lines: list[str] = []
    monitor.log = Logger(observer=lambda e: lines.append(formatEvent(e)))  # type: ignore[misc]
    return lines


def test_the_lag_monitor_logs_a_crossed_bound_and_the_recovery_once_each() -> None:
    clock = clock_at(1000)
    w = two_partitions(clock)
    monitor = LagMonitor(w, clock, {"object": 2.0, "template": 0.0, "doc": 2.0, "slow": 10.0})
    lines = collecting(monitor)
    monitor.start()
    clock.advance(1.5)
    assert lines == [], "start-up is not an outage"
    clock.advance(1.0)
    assert lines == ["events are behind by unknown (no end offset confirmed yet) s, over max_staleness 2.0 s of routes doc,object: their entries are served only within 2.0 s of their fetch"]
    w.vouch([P0, P1], clock.seconds())
    clock.advance(0.5)
    assert lines[1:] == ["events caught up: behind by 0.5 s, within max_staleness 2.0 s of routes doc,object"]
    for _ in range(10):
        clock.advance(0.5)
    assert len(lines) == 3
    assert lines[2].startswith("events are behind by 2.5 s, over max_staleness 2.0 s")
    for _ in range(16):
        clock.advance(0.5)
    assert len(lines) == 4 and "over max_staleness 10.0 s of routes slow" in lines[3]
    monitor.stop()
    assert clock.getDelayedCalls() == []


def test_the_lag_monitor_shares_marks_through_the_exchange() -> None:
    clock = clock_at(1000)
    exchange = Exchange()
    w = Watermark(clock, group=True, shared=True)
    w.set_partitions([P0, P1])
    w.assign([P0])
    monitor = LagMonitor(w, clock, {}, exchange)
    exchange.marks[P1] = 999.0  # another instance's
    w.vouch([P0], 999.5)
    monitor.tick()
    assert exchange.published == [{P0: 999.5}]
    assert w.value() == 999.0
    exchange.live = False
    assert w.value() == NEVER, "only while this instance's subscription is live"
    exchange.live = True
    exchange.down = True
    monitor.tick()  # logged at debug, and tried again at the next tick
    exchange.down = False
    exchange.marks[P1] = 1000.0
    monitor.tick()
    assert w.value() == 999.5


# --- the listener: its consumer thread, driven from here ---------------------------------


class WatermarkConsumer(EndOffsetConsumer):
    """The end-offset fake with two partitions unless told otherwise."""

    def __init__(self, messages: list[FakeMessage] | None = None, ends: dict[int, int] | None = None, partitions: int = 2) -> None:
        super().__init__(messages or [], ends, partitions)


class AppendedMessage(FakeMessage):
    def __init__(self, partition: int, offset: int, value: bytes | None, append_ms: int) -> None:
        super().__init__(partition, offset, value)
        self.append_ms = append_ms

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_LOG_APPEND_TIME, self.append_ms)


def eof(partition: int, offset: int) -> FakeMessage:
    return FakeMessage(partition, offset, error=KafkaError(KafkaError._PARTITION_EOF))


def driven(mode: str = "broadcast", shared_store: bool = False, invalidator: Any = None) -> tuple[EventListenerService, ImmediateClock]:
    clock = ImmediateClock()
    clock.advance(1000)
    handler = EventHandler(EventDecoder(CONFIG.events, CONFIG.routes), invalidator or FlakyInvalidator(), clock)
    w = Watermark(clock, group=mode == "group", shared=shared_store)
    svc = EventListenerService(kafka_config(mode), handler, clock, "host", watermark=w)
    return svc, clock


def assign(svc: EventListenerService, consumer: FakeConsumer, *partitions: int) -> None:
    svc.loop.on_assign(consumer, [TopicPartition("t", p) for p in partitions])


def test_an_end_offset_not_beyond_what_was_applied_vouches_for_the_time_the_query_was_sent() -> None:
    svc, clock = driven()
    consumer = WatermarkConsumer([FakeMessage(0, 5, event("1")), FakeMessage(1, 2, event("2"))], ends={0: 6, 1: 4}, partitions=2)
    consumer.committed_offsets = {0: 5, 1: 2}
    assign(svc, consumer, 0, 1)
    w = svc.watermark
    svc.loop.poll_once(consumer)
    svc.loop.watch_end_offsets(consumer)
    assert consumer.queries == [[("t", 0, -1), ("t", 1, -1)]], "one query for every partition held, OFFSET_END"
    assert w.partitions == {P0, P1}
    assert w.local == {P0: 1000.0}, "partition 1 ends at 4, only 3 applied"
    assert w.value() == NEVER
    assert svc.info()["events_lag_s"] is None

    clock.advance(0.2)
    svc.loop.watch_end_offsets(consumer)
    assert len(consumer.queries) == 1, "asked again only after half a second"
    consumer.messages = [FakeMessage(1, 3, event("3"))]
    svc.loop.poll_once(consumer)
    clock.advance(0.3)
    svc.loop.watch_end_offsets(consumer)
    assert w.local == {P0: 1000.5, P1: 1000.5}
    clock.advance(2.0)
    assert svc.info()["events_lag_s"] == 2.0
    assert svc.info()["events"]["events_lag_s"] == 2.0
    gauges = {m.name: m.samples[0].value for m in svc.metrics()}
    assert gauges["apicache_events_lag_seconds"] == 2.0


def test_the_end_of_a_partition_counts_as_applied_unless_a_message_before_it_failed() -> None:
    invalidator = FlakyInvalidator("bad")
    svc, clock = driven(invalidator=invalidator)
    consumer = WatermarkConsumer(
        # partition 0 ends past a transaction marker: its end is 9, not 8
        [FakeMessage(0, 7, event("1")), eof(0, 9), FakeMessage(1, 2, event("bad")), eof(1, 3)],
        ends={0: 9, 1: 3},
    )
    consumer.committed_offsets = {0: 7, 1: 2}
    assign(svc, consumer, 0, 1)
    svc.loop.stop()  # the retry pause returns at once
    svc.loop.poll_once(consumer)
    assert svc.loop.applied == {P0: 9}
    svc.loop.watch_end_offsets(consumer)
    assert svc.watermark.local == {P0: 1000.0}

    invalidator.failing.clear()
    consumer.messages = [FakeMessage(1, 2, event("bad")), eof(1, 3)]
    svc.loop.poll_once(consumer)
    clock.advance(1)
    svc.loop.watch_end_offsets(consumer)
    assert svc.watermark.value() == 1001.0


def test_a_failed_end_offset_query_vouches_for_nothing() -> None:
    svc, clock = driven()
    consumer = WatermarkConsumer([eof(0, 4), eof(1, 0)], ends={0: 4, 1: 0})
    consumer.committed_offsets = {0: 4, 1: 0}
    assign(svc, consumer, 0, 1)
    svc.loop.poll_once(consumer)
    svc.loop.watch_end_offsets(consumer)
    assert svc.watermark.value() == 1000.0
    consumer.query_error = KafkaError(KafkaError._TIMED_OUT, "timed out")
    for _ in range(10):
        clock.advance(0.5)
        svc.loop.watch_end_offsets(consumer)
    assert svc.watermark.value() == 1000.0
    assert svc.watermark.lag() == 5.0, "the lag grows while the broker does not answer"
    consumer.query_error = None
    clock.advance(0.5)
    svc.loop.watch_end_offsets(consumer)
    assert svc.watermark.lag() == 0.0


def test_an_end_offset_beyond_what_was_applied_holds_w_back() -> None:
    svc, clock = driven()
    consumer = WatermarkConsumer([eof(0, 4), eof(1, 0)], ends={0: 4, 1: 0})
    consumer.committed_offsets = {0: 4, 1: 0}
    assign(svc, consumer, 0, 1)
    svc.loop.poll_once(consumer)
    svc.loop.watch_end_offsets(consumer)
    consumer.ends = {0: 5, 1: 0}  # an event appended, not yet fetched
    for _ in range(4):
        clock.advance(0.5)
        svc.loop.watch_end_offsets(consumer)
    assert svc.watermark.value() == 1000.0
    assert svc.watermark.local[P1] == 1002.0


def test_log_append_time_of_the_newest_applied_message_counts_less_the_skew() -> None:
    svc, _ = driven()
    consumer = WatermarkConsumer([AppendedMessage(0, 1, event("1"), 995_000), AppendedMessage(0, 2, event("2"), 996_000)])
    consumer.committed_offsets = {0: 1}
    assign(svc, consumer, 0)
    svc.watermark.set_partitions([P0])
    svc.loop.poll_once(consumer)
    assert svc.watermark.value() == 995.0, "996 s less kafka.max_clock_skew (1 s)"
    assert consumer.queries == []


def test_creation_timestamps_vouch_for_nothing() -> None:
    svc, _ = driven()
    consumer = WatermarkConsumer([FakeMessage(0, 1, event("1"))])  # CreateTime 990 s
    consumer.committed_offsets = {0: 1}
    assign(svc, consumer, 0)
    svc.watermark.set_partitions([P0])
    svc.loop.poll_once(consumer)
    assert svc.watermark.value() == NEVER


def test_a_broadcast_start_at_the_end_is_a_skip() -> None:
    svc, clock = driven()
    consumer = WatermarkConsumer()
    consumer.high = 42
    assign(svc, consumer, 0)
    assert consumer.assigned == [("t", 0, 42)]
    assert svc.watermark.skipped_at == 1000.0
    clock.advance(5)
    # a partition known before starts at the beginning, committed offsets win: no skip
    svc.loop.on_revoke(consumer, [TopicPartition("t", 0)])
    assign(svc, consumer, 0)
    consumer.committed_offsets = {1: 3}
    assign(svc, consumer, 1)
    assert svc.watermark.skipped_at == 1000.0


@pytest.mark.parametrize(("shared", "skipped"), [(False, 1000.0), (True, NEVER)])
def test_taking_partitions_over_in_group_mode_is_a_skip_only_with_a_store_of_ones_own(shared: bool, skipped: float) -> None:
    svc, _ = driven(mode="group", shared_store=shared)
    consumer = WatermarkConsumer()
    consumer.committed_offsets = {0: 3}
    assign(svc, consumer, 0)
    assert consumer.assigned == [], "group mode keeps the group's offsets"
    assert svc.watermark.assigned == {P0}
    assert svc.watermark.skipped_at == skipped


def test_an_offset_reset_is_a_skip() -> None:
    svc, clock = driven()
    log = LibrdkafkaLog(svc.loop)
    log.log(30, "%s [%s] %s", "OFFSET", "rdkafka#consumer-1", "t [0]: offset reset (at offset 5, broker 1) to offset BEGINNING: fetch failed due to requested offset not available on the broker: Broker: Offset out of range")
    assert svc.watermark.skipped_at == 1000.0
    clock.advance(1)
    log.log(30, "%s [%s] %s", "FETCH", "rdkafka#consumer-1", "t [0]: something else")
    assert svc.watermark.skipped_at == 1000.0


def test_revoked_and_lost_partitions_leave_the_watermark_assignment() -> None:
    svc, _ = driven(mode="group")
    consumer = WatermarkConsumer()
    consumer.committed_offsets = {0: 3, 1: 3}
    assign(svc, consumer, 0, 1)
    svc.loop.on_revoke(consumer, [TopicPartition("t", 1)])
    assert svc.watermark.assigned == {P0}
    assert svc.loop.held == {P0}
    svc.loop.on_lost(consumer, [TopicPartition("t", 0)])
    assert svc.watermark.assigned == set() and svc.loop.held == set()
