"""
The Kafka consumer loop of the event listener (SPEC.md section 5), on a
thread of its own: L{ConsumerLoop} takes each batch of messages, hands it to
the reactor, where an L{EventHandler} applies it, and stores a message's
offset for commit only after it was applied or skipped (at-least-once).
Stored offsets are committed in the background, when partitions are revoked
and on close.

Bounded staleness: the loop also keeps, per partition, the offset up to
which messages were applied, asks the broker for the partitions' end offsets
every L{_QUERY_SECONDS}, and advances the L{Watermark} W_p of each partition
whose answer was not beyond what was applied to the time the query was sent.

The seam: each step of the loop is a public method taking the consumer
(L{KafkaConsumer}: what the loop uses of confluent-kafka's C{Consumer}), so
that a test drives the loop synchronously with a fake one; the thread body
(L{ConsumerLoop.run}) makes its consumer with L{ConsumerLoop.make_consumer}.
L{apicache.events.kafka.EventListenerService} starts and stops the thread.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from apicache.events.handling import EventHandler
from apicache.events.watermark import Partition, Watermark, judge_end_offsets

__all__ = ["ConsumerLoop", "ConsumerLinks", "KafkaConsumer", "LibrdkafkaLog"]

# the consumer thread's pacing
_POLL_SECONDS = 0.2
_BATCH = 500
_RETRY_SECONDS = 1.0
#: the same complaint is logged once in this many seconds
_REPEAT_SECONDS = 30.0
#: end offsets are asked for this often: the steady-state lag of W
_QUERY_SECONDS = 0.5
#: the longest the consumer thread waits for an end-offset or metadata
#: answer (a frozen broker must not hold up polling)
_QUERY_TIMEOUT = 1.0
#: the partitions of the configured topics are listed this often
_METADATA_SECONDS = 5.0


class KafkaConsumer(Protocol):
    """
    What the loop uses of confluent-kafka's C{Consumer}.
    """

    def subscribe(self, topics: list[str], **callbacks: Any) -> None: ...
    def poll(self, timeout: float) -> Message | None: ...
    def consume(self, num_messages: int, timeout: float) -> list[Message]: ...
    def store_offsets(self, *, offsets: list[TopicPartition]) -> None: ...
    def seek(self, partition: TopicPartition) -> None: ...
    def commit(self, *, asynchronous: bool) -> Any: ...
    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]: ...
    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]: ...
    def assign(self, partitions: list[TopicPartition]) -> None: ...
    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]: ...
    def list_topics(self, topic: str, timeout: float) -> Any: ...
    def set_sasl_credentials(self, username: str, password: str) -> None: ...
    def close(self) -> None: ...


class ConsumerLinks:
    """
    Connection state the consumer thread writes and the reactor reads
    (plain attribute stores: atomic in CPython).
    """

    def __init__(self) -> None:
        self.connected = False
        self.joined = False
        self.assigned: list[str] = []
        self.error = ""



class ConsumerLoop:
    """
    The consumer thread's work.  Every method but L{renew} and L{stop} runs
    on the consumer thread (librdkafka calls the C{on_*} callbacks from
    C{poll}); what reaches the reactor goes through C{callFromThread} or
    C{blockingCallFromThread}.

    @ivar links: the connection state, for readiness (written here, read
        on the reactor thread).
    @ivar held: the partitions assigned to this consumer now.
    @ivar applied: per partition held, the offset below which every message
        was applied (or skipped as not an event).
    @ivar make_consumer: makes the consumer from its settings and logger
        (confluent-kafka's C{Consumer}).
    """

    log = Logger()

    def __init__(
        self,
        topics: Sequence[str],
        handler: EventHandler,
        reactor: IReactorFromThreads,
        watermark: Watermark,
        *,
        broadcast: bool,
        username: str | None = None,
        make_consumer: Callable[..., Any] = Consumer,
    ) -> None:
        """
        @param reactor: where the work is handed; it must provide
            L{IReactorTime} as well.
        @param broadcast: the consumer group is this instance's own.
        @param username: the SASL user a renewed OAuth token is for.
        """
        self.topics = tuple(topics)
        self.handler = handler
        self.reactor = reactor
        self.clock = IReactorTime(reactor)
        self.watermark = watermark
        self.broadcast = broadcast
        self.username = username
        self.make_consumer = make_consumer
        self.links = ConsumerLinks()
        self._stop = threading.Event()
        self._new_password: str | None = None
        self._seen: set[tuple[str, int]] = set()
        self._last_error_log: dict[int, float] = {}
        self.applied: dict[Partition, int] = {}
        self.held: set[Partition] = set()
        self._next_query = 0.0
        self._next_metadata = 0.0
        #: the partitions the topics' metadata listed last, and those it
        #: listed once and no longer lists
        self._listed: set[Partition] = set()
        self._gone: set[Partition] = set()

    # -- from the reactor thread ----------------------------------------------

    def renew(self, password: str) -> None:
        """
        Hand a renewed SASL password (an OAuth token) to the consumer before
        its next poll.
        """
        self._new_password = password

    def stop(self) -> None:
        """
        Make L{run} return after the current turn; a retry pause returns at once.
        """
        self._stop.set()

    def restart(self) -> None:
        """
        Undo L{stop}, before the thread is started again.
        """
        self._stop.clear()

    # -- on the consumer thread ---------------------------------------------------

    def _from_thread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.reactor.callFromThread(f, *args, **kwargs)

    def due(self, complaint: int) -> bool:
        """
        Return whether a log line about ``complaint`` is due: none in the
        last L{_REPEAT_SECONDS} (or the clock was set back), and note it.
        """
        # the reactor's clock: its seconds() may be read from any thread
        now = self.clock.seconds()
        last = self._last_error_log.get(complaint)
        if last is not None and 0 <= now - last < _REPEAT_SECONDS:
            return False
        self._last_error_log[complaint] = now
        return True

    def on_error(self, error: KafkaError) -> None:
        """
        librdkafka's error callback: an unreachable broker or refused
        credentials mark the consumer disconnected; logged once in a while.
        """
        code = error.code()
        if code in (KafkaError._ALL_BROKERS_DOWN, KafkaError._AUTHENTICATION, KafkaError._SSL):
            self.links.connected = False
        self.links.error = error.str()
        # a broker that is away reports the same error twice a second
        if self.due(code):
            self._from_thread(self.log.warn, "kafka: {error}", error=error.str(), code=error.name())

    def on_stats(self, raw: str) -> None:
        """
        librdkafka's statistics callback: connected while a broker is up.
        """
        try:
            brokers = json.loads(raw).get("brokers", {})
        except ValueError:
            return
        up = any(b.get("state") == "UP" for b in brokers.values())
        if up != self.links.connected:
            self.links.connected = up
            if up:
                self._from_thread(self.log.info, "kafka: connected")
            else:
                self._from_thread(self.log.warn, "kafka: no broker reachable")

    def on_assign(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """
        Partitions were assigned: where each starts (broadcast mode), the
        watermark told, readiness noted.
        """
        # (confluent-kafka assigns the partitions itself after this returns,
        # eagerly or incrementally as the group's protocol says, unless we did)
        if self.broadcast and partitions:
            partitions = self._broadcast_positions(consumer, partitions)
            consumer.assign(partitions)
        elif partitions and not self.watermark.shared:
            # group mode, a store of this instance's own: what the previous
            # holder applied never reached this cache
            self.skipped("partitions taken over in group mode")
        held = [(p.topic, p.partition) for p in partitions]
        self.held.update(held)
        self._from_thread(self.watermark.assign, held)
        self._seen.update((p.topic, p.partition) for p in partitions)
        self.links.assigned = sorted(set(self.links.assigned) | {f"{p.topic}:{p.partition}" for p in partitions})
        self.links.joined = True
        self._from_thread(
            self.log.info,
            "kafka: assigned {n} partitions: {which}",
            n=len(partitions),
            which=" ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions),
        )

    def _broadcast_positions(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """
        A partition this instance has not consumed yet starts at its end
        (the cache is empty); one it had (the broker lost the group's
        offsets) starts at the beginning, so that nothing is missed.
        Committed offsets win.
        """
        try:
            committed = consumer.committed(partitions, timeout=5)
        except KafkaException:
            committed = [TopicPartition(p.topic, p.partition) for p in partitions]
        out = []
        skipped = False
        for p in committed:
            if p.offset < 0:
                if (p.topic, p.partition) in self._seen:
                    p = TopicPartition(p.topic, p.partition, OFFSET_BEGINNING)
                else:
                    try:
                        _, high = consumer.get_watermark_offsets(p, timeout=5)
                        p = TopicPartition(p.topic, p.partition, high)
                        skipped = True
                    except KafkaException:
                        p = TopicPartition(p.topic, p.partition)  # auto.offset.reset
            out.append(p)
        if skipped:
            # the messages before the end were never applied: entries
            # fetched before now (other instances' in a shared store, or
            # this one's while it started) are not vouched for by W
            self.skipped("started at the end of the topic")
        return out

    def skipped(self, why: str) -> None:
        """
        Note (consumer thread) that messages were skipped now: entries
        fetched before are judged by their fetch time alone.
        """
        at = self.clock.seconds()
        self._from_thread(self.watermark.skip, at)
        self._from_thread(self.log.info, "kafka: messages skipped ({why}): entries fetched before are judged by their age alone", why=why)

    def on_revoke(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """
        Partitions are revoked: what was applied is committed first.
        """
        self.commit(consumer)
        gone = {f"{p.topic}:{p.partition}" for p in partitions}
        self.links.assigned = [a for a in self.links.assigned if a not in gone]
        revoked = [(p.topic, p.partition) for p in partitions]
        self.held.difference_update(revoked)
        self._from_thread(self.watermark.revoke, revoked)

    def on_lost(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """
        Partitions were lost (the group moved on without this member).
        """
        self.links.assigned = []
        self.links.joined = False
        self.held.clear()
        self._from_thread(self.watermark.revoke, None)
        self._from_thread(self.log.warn, "kafka: partitions lost; rejoining the group")

    def commit(self, consumer: KafkaConsumer) -> None:
        """
        Commit the stored offsets now; a refusal is logged (nothing stored yet is not worth a line).
        """
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as e:
            if e.args[0].code() != KafkaError._NO_OFFSET:
                self._from_thread(self.log.warn, "kafka: commit failed: {error}", error=e.args[0].str())

    def run(self, settings: Mapping[str, Any], finished: Callable[[], None]) -> None:
        """
        The consumer thread: create a consumer with ``settings`` (through
        L{make_consumer}), subscribe, and L{poll_once} and
        L{watch_end_offsets} until L{stop}; then commit and close, and call
        ``finished`` on the reactor thread.  Never raises: what goes wrong
        is logged, and the daemon serves on.
        """
        try:
            consumer = self.make_consumer(
                {**settings, "error_cb": self.on_error, "stats_cb": self.on_stats},
                logger=LibrdkafkaLog(self),
            )
            consumer.subscribe(list(self.topics), on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_lost)
        except Exception as e:  # noqa: BLE001 - reported, and the daemon serves on
            self.links.error = str(e)
            self._from_thread(self.log.error, "kafka: the event listener could not start: {error}", error=str(e))
            self._from_thread(finished)
            return
        try:
            self._consume(consumer)
        except Exception:  # noqa: BLE001
            self._from_thread(self.log.failure, "kafka: the event listener stopped", Failure())
        finally:
            try:
                self.commit(consumer)
                consumer.close()
            except Exception as e:  # noqa: BLE001
                self._from_thread(self.log.warn, "kafka: close failed: {error}", error=str(e))
            self.links.connected = False
            self.links.joined = False
            self._from_thread(finished)

    def _consume(self, consumer: KafkaConsumer) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once(consumer)
                self.watch_end_offsets(consumer)
            except Exception:  # noqa: BLE001 - the listener must go on
                self._from_thread(self.log.failure, "kafka: unexpected error in the event listener", Failure())
                self._stop.wait(_RETRY_SECONDS)

    def poll_once(self, consumer: KafkaConsumer) -> None:
        """
        One turn of the loop: take the messages that have arrived (waiting a moment for the
        first), apply them on the reactor thread, and store the offsets of
        those applied or skipped.
        """
        password, self._new_password = self._new_password, None
        if password is not None and self.username is not None:
            # new connections use it; existing ones stay authenticated
            consumer.set_sasl_credentials(self.username, password)
        # consume() waits for a full batch or its timeout: wait for one
        # message, then take what else has arrived
        first = consumer.poll(_POLL_SECONDS)
        if first is None:
            return
        batch: list[Message] = []
        # the end of a partition, and how many messages came before it
        ends: list[tuple[Partition, int, int]] = []
        for m in [first, *consumer.consume(_BATCH - 1, 0)]:
            error = m.error()
            if error is None:
                batch.append(m)
            elif error.code() == KafkaError._PARTITION_EOF:
                ends.append(((m.topic() or "", m.partition() or 0), m.offset() or 0, len(batch)))
            else:
                self.on_error(error)
        done = 0
        if batch:
            work = [(m.value(), _timestamp(m), f"{m.topic()}[{m.partition()}]@{m.offset()}") for m in batch]
            try:
                done = blockingCallFromThread(self.reactor, self.handler.handle_batch, work)  # type: ignore[arg-type]  # mypy infers Never for a Deferred-returning f
            except Exception:  # noqa: BLE001 - the reactor is going away
                self._stop.set()
                return
        self._note_applied(batch[:done], [(p, offset) for p, offset, before in ends if before <= done])
        if not batch:
            return
        if done:
            consumer.store_offsets(offsets=_next_offsets(batch[:done]))
        if done < len(batch):
            # not applied: go back to the first message of each partition
            # that was not, and try again a little later
            for m in _first_per_partition(batch[done:]):
                consumer.seek(TopicPartition(m.topic() or "", m.partition() or 0, m.offset() or 0))
            self._stop.wait(_RETRY_SECONDS)

    # -- the event watermark (consumer thread) -------------------------------

    def _note_applied(self, applied: Sequence[Message], ends: Sequence[tuple[Partition, int]]) -> None:
        """
        Advance the applied offsets past ``applied`` messages and to the
        partition ends reached after them; hand the LogAppendTime of the
        newest applied message of each partition to the watermark.
        """
        appended: dict[Partition, float] = {}
        for m in applied:
            p = (m.topic() or "", m.partition() or 0)
            self.applied[p] = max(self.applied.get(p, 0), (m.offset() or 0) + 1)
            kind, ms = m.timestamp()
            if kind == TIMESTAMP_LOG_APPEND_TIME and ms > 0:
                appended[p] = ms / 1000.0
        for p, offset in ends:
            self.applied[p] = max(self.applied.get(p, 0), offset)
        for p, at in appended.items():
            self._from_thread(self.watermark.appended, p, at)

    def watch_end_offsets(self, consumer: KafkaConsumer) -> None:
        """
        Every L{_QUERY_SECONDS}: ask the broker for the end offsets of the
        partitions held (ListOffsets at the consumer's isolation level, one
        query for all) and vouch, for each whose answer is not beyond what
        was applied, for the time the query was sent.  Every
        L{_METADATA_SECONDS}, list the topics' partitions first.  Blocks for
        L{_QUERY_TIMEOUT} at most per request.
        """
        now = self.clock.seconds()
        if now < self._next_query:
            return
        self._next_query = now + _QUERY_SECONDS
        if now >= self._next_metadata:
            self._list_partitions(consumer)
        held = sorted(p for p in self.held if p in self.applied)
        if not held:
            return
        sent = self.clock.seconds()
        try:
            answers = consumer.offsets_for_times([TopicPartition(t, n, OFFSET_END) for t, n in held], timeout=_QUERY_TIMEOUT)
        except KafkaException:
            # the broker is away or slow: W stays where it was (the error
            # callback reports an unreachable broker)
            return
        vouched, truncated = judge_end_offsets(
            self.applied, [((a.topic, a.partition), a.offset) for a in answers if a.error is None]
        )
        if truncated:
            # (v3) the broker lost or truncated its log: a skip
            self.skipped("an end offset below the offset applied")
        if vouched:
            self._from_thread(self.watermark.vouch, vouched, sent)

    def _list_partitions(self, consumer: KafkaConsumer) -> None:
        found: list[Partition] = []
        for topic in self.topics:
            try:
                metadata = consumer.list_topics(topic, timeout=_QUERY_TIMEOUT)
            except KafkaException:
                return  # keep what was listed last
            t = metadata.topics.get(topic)
            if t is not None and t.error is None:
                found.extend((topic, n) for n in t.partitions)
        self._next_metadata = self.clock.seconds() + _METADATA_SECONDS
        listed = set(found)
        self._gone |= self._listed - listed
        back = self._gone & listed
        self._listed = listed
        if back:
            # (v3) a partition that disappeared and came back (a topic
            # deleted and made again): a skip, as a truncated log is; its
            # old applied offset says nothing about the new log
            self._gone -= back
            for p in back:
                self.applied.pop(p, None)
            self.skipped("a partition that disappeared and came back")
        self._from_thread(self.watermark.set_partitions, found)



def _timestamp(m: Message) -> float | None:
    kind, ms = m.timestamp()
    return ms / 1000.0 if kind != 0 and ms > 0 else None


def _next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        last[(m.topic() or "", m.partition() or 0)] = m.offset() or 0
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def _first_per_partition(messages: Sequence[Message]) -> list[Message]:
    first: dict[tuple[str, int], Message] = {}
    for m in messages:
        first.setdefault((m.topic() or "", m.partition() or 0), m)
    return list(first.values())


class LibrdkafkaLog:
    """
    librdkafka's own log lines (warnings and worse), sent to the reactor's
    log.  confluent-kafka calls ``log(level, fmt, *args)`` like the logging
    module's loggers.
    """

    def __init__(self, loop: ConsumerLoop) -> None:
        self._service = loop

    def log(self, level: int, fmt: str, *args: Any) -> None:
        # confluent-kafka passes (facility, client name, text)
        if len(args) == 3 and args[0] == "OFFSET" and "offset reset" in str(args[2]):
            # a committed offset out of range, reset by auto.offset.reset:
            # the messages in between are never applied
            self._service.skipped("offset reset")
        # connection failures come through the error callback as well
        if level < 30 or (args and args[0] == "FAIL"):  # 30: logging.WARNING
            return
        try:
            text = fmt % args
        except (TypeError, ValueError):
            text = fmt
        svc = self._service
        # the same complaint every reconnect attempt: once in a while is enough
        if svc.due(hash(text[:60])):
            svc._from_thread(svc.log.warn, "librdkafka: {line}", line=text[:500])
