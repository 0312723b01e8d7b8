"""
Issue 19, broker log reset (SPEC.md section 5, v3): an end offset found
below the offset applied (the broker lost or truncated its log) is a skip,
and the old applied offset no longer vouches for the partition while the
new log's messages, an invalidation among them, are still to be applied.

Through the public seam of the watermark (L{Watermark},
L{judge_end_offsets}) over a Clock, and through the listener's end-offset
step with a fake consumer (the loop's public seam).
"""

from __future__ import annotations

from bounds_support import listener
from confluent_kafka import KafkaError, TopicPartition
from listener_support import event
from twisted.internet.task import Clock

from apicache.events.watermark import NEVER, Partition, Watermark, judge_end_offsets
from apicache.testing import EndOffsetConsumer, FakeMessage

P0: Partition = ("t", 0)
P1: Partition = ("t", 1)


def test_end_offsets_are_judged_against_the_offsets_applied() -> None:
    applied = {P0: 100, P1: 7}
    vouched, truncated = judge_end_offsets(applied, [(P0, 100), (P1, 9), (("t", 2), 3), (("t", 3), -1)])
    assert (vouched, truncated) == ([P0], [])
    vouched, truncated = judge_end_offsets(applied, [(P0, 5), (P1, 7)])
    assert (vouched, truncated) == ([P1], [P0])
    assert applied == {P1: 7}, "the old offset is forgotten"
    assert judge_end_offsets(applied, [(P0, 5)]) == ([], []), "and vouches for nothing any more"


def test_a_log_reset_is_a_skip_and_w_waits_for_the_new_log() -> None:
    """
    The watermark seam as the listener uses it: applied up to 100, vouched
    at 1000; at 1010 the broker's log ends at 5 (truncated), an invalidation
    is appended at offset 5 and not yet applied: W_p stays at 1000 and
    entries fetched before 1010 are judged by their fetch time alone; once
    the listener applied the new log up to its end, W moves on.
    """
    clock = Clock()
    clock.advance(1000)
    w = Watermark(clock)
    w.set_partitions([P0])
    applied = {P0: 100}
    vouched, truncated = judge_end_offsets(applied, [(P0, 100)])
    w.vouch(vouched, clock.seconds())
    assert w.value() == 1000.0
    clock.advance(10)
    vouched, truncated = judge_end_offsets(applied, [(P0, 5)])
    assert truncated == [P0]
    w.skip(clock.seconds())
    for _ in range(6):  # the invalidation at offset 5 is pending: end 6
        clock.advance(0.5)
        vouched, _ = judge_end_offsets(applied, [(P0, 6)])
        w.vouch(vouched, clock.seconds())
    assert w.value() == 1000.0
    assert w.vouched(1005.0) == 1005.0, "fetched before the reset: F alone"
    applied[P0] = 6  # the listener applied offset 5
    clock.advance(0.5)
    vouched, _ = judge_end_offsets(applied, [(P0, 6)])
    w.vouch(vouched, clock.seconds())
    assert w.value() == 1013.5


def test_the_listener_records_an_end_offset_below_the_applied_one_as_a_skip() -> None:
    """Through the listener's loop seam (its public steps), a fake consumer for the broker."""
    svc, clock = listener()
    consumer = EndOffsetConsumer(ends={0: 100})
    consumer.committed_offsets = {0: 99}
    svc.loop.on_assign(consumer, [TopicPartition("t", 0)])  # type: ignore[arg-type]
    consumer.messages = [FakeMessage(0, 99, event("1")), eof(0, 100)]
    svc.loop.poll_once(consumer)  # type: ignore[arg-type]
    assert svc.loop.applied == {P0: 100}
    svc.loop.watch_end_offsets(consumer)  # type: ignore[arg-type]
    assert svc.watermark.local == {P0: 1000.0}
    assert svc.watermark.skipped_at == NEVER
    # the broker comes back with its log truncated; an invalidation is appended at 5
    consumer.ends = {0: 6}
    for _ in range(4):
        clock.advance(0.5)
        svc.loop.watch_end_offsets(consumer)  # type: ignore[arg-type]
    assert svc.watermark.skipped_at == 1000.5
    assert svc.watermark.local == {P0: 1000.0}, "old applied offsets vouch for nothing"
    assert svc.watermark.vouched(1001.0) == 1001.0
    # the listener reaches the new log's end: W moves on
    consumer.messages = [FakeMessage(0, 5, event("2")), eof(0, 6)]
    svc.loop.poll_once(consumer)  # type: ignore[arg-type]
    clock.advance(0.5)
    svc.loop.watch_end_offsets(consumer)  # type: ignore[arg-type]
    assert svc.watermark.local == {P0: 1002.5}


def eof(partition: int, offset: int) -> FakeMessage:
    return FakeMessage(partition, offset, error=KafkaError(KafkaError._PARTITION_EOF))


def test_a_partition_that_disappears_and_comes_back_is_a_skip() -> None:
    """
    SPEC.md section 5 (v3): the topics' metadata stops listing a partition
    (a topic deleted) and lists it again later (made again): a skip, and
    its old applied offset vouches for nothing until the new log is applied.
    """
    svc, clock = listener()
    consumer = EndOffsetConsumer(ends={0: 100}, partitions=2)
    consumer.committed_offsets = {0: 99}
    svc.loop.on_assign(consumer, [TopicPartition("t", 0)])  # type: ignore[arg-type]
    consumer.messages = [FakeMessage(0, 99, event("1")), eof(0, 100)]
    svc.loop.poll_once(consumer)  # type: ignore[arg-type]
    svc.loop.watch_end_offsets(consumer)  # type: ignore[arg-type]
    assert svc.watermark.partitions == {P0, P1}
    assert svc.watermark.skipped_at == NEVER
    # partition 1 is gone from the metadata: not a skip by itself
    consumer.partitions = 1
    clock.advance(6)  # the metadata is listed every 5 s
    svc.loop.watch_end_offsets(consumer)  # type: ignore[arg-type]
    assert svc.watermark.partitions == {P0}
    assert svc.watermark.skipped_at == NEVER
    # the same listing again: still nothing skipped
    clock.advance(6)
    svc.loop.watch_end_offsets(consumer)  # type: ignore[arg-type]
    assert svc.watermark.skipped_at == NEVER
    # partition 0 disappears too; then both come back
    consumer.partitions = 0
    clock.advance(6)
    svc.loop.watch_end_offsets(consumer)  # type: ignore[arg-type]
    assert svc.watermark.skipped_at == NEVER
    consumer.partitions = 2
    clock.advance(6)
    svc.loop.watch_end_offsets(consumer)  # type: ignore[arg-type]
    assert svc.watermark.skipped_at == clock.seconds()
    assert svc.watermark.partitions == {P0, P1}
    assert P0 not in svc.loop.applied, "the old offset says nothing about the new log"
    assert svc.watermark.vouched(clock.seconds() - 1) == clock.seconds() - 1
