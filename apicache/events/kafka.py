"""
The Kafka side of the event listener (SPEC.md section 5): one confluent-kafka
consumer on a thread of its own, its librdkafka settings and log lines, and
the offsets.

The consumer thread hands each batch of messages to the reactor, where an
L{EventHandler} applies them, and stores a message's offset for commit only
after it was applied or skipped (at-least-once).  Stored offsets are
committed in the background, when partitions are revoked and on close.

Bounded staleness (SPEC.md section 5): the consumer thread also keeps, per
partition, the offset up to which messages were applied, asks the broker
for the partitions' end offsets every L{_QUERY_SECONDS}, and advances the
L{Watermark} W_p of each partition whose answer was not beyond what was
applied to the time the query was sent.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from apicache.config import KafkaConfig
from apicache.events.handling import EventHandler
from apicache.events.lag import LagMonitor
from apicache.events.watermark import Partition, Watermark, WatermarkExchange, judge_end_offsets

if TYPE_CHECKING:
    from apicache.events.oauth import TokenProvider

__all__ = ["EventListenerService", "consumer_settings", "redact", "check_consumer_settings"]

#: librdkafka settings whose values are never logged.
_SECRET_SETTING = re.compile(r"password|secret|token|key$|\.pem$|jaas", re.IGNORECASE)

# the consumer thread's pacing
_POLL_SECONDS = 0.2
_BATCH = 500
_RETRY_SECONDS = 1.0
_STOP_SECONDS = 5.0
#: the same complaint is logged once in this many seconds
_REPEAT_SECONDS = 30.0
#: end offsets are asked for this often: the steady-state lag of W
_QUERY_SECONDS = 0.5
#: the longest the consumer thread waits for an end-offset or metadata
#: answer (a frozen broker must not hold up polling)
_QUERY_TIMEOUT = 1.0
#: the partitions of the configured topics are listed this often
_METADATA_SECONDS = 5.0


# --- librdkafka settings ----------------------------------------------------


def consumer_settings(kafka: KafkaConfig, group_id: str) -> dict[str, Any]:
    """
    Return the librdkafka settings for the listener's consumer: ours, then
    the security settings, then ``kafka.extra``, which wins.
    """
    settings: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": group_id,
        "client.id": "apicache",
        # offsets are stored by hand once an event is applied, then
        # committed in the background and on revocation and close
        "enable.auto.offset.store": False,
        "enable.auto.commit": True,
        "auto.offset.reset": "earliest",
        # librdkafka retries a refused connection every reconnect.backoff.ms/2
        # or so (it does not grow while the broker refuses): about twice a
        # second, a reconnect soon after the broker is back, no busy loop
        "reconnect.backoff.ms": 1000,
        "reconnect.backoff.max.ms": 5000,
        # broker states for the readiness check
        "statistics.interval.ms": 1000,
        # a subscribed topic created after start-up is found within seconds
        # (librdkafka's default: 5 minutes)
        "topic.metadata.refresh.interval.ms": 5000,
        # the end of a partition, reached after the messages before it were
        # handed over: how a partition whose tail holds no message (a
        # transaction marker, nothing at all) is known to be applied
        "enable.partition.eof": True,
        "security.protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        settings["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username:
        settings["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password:
        settings["sasl.password"] = kafka.sasl_password
    if kafka.ssl_ca_location:
        settings["ssl.ca.location"] = kafka.ssl_ca_location
    for k, v in kafka.extra.items():
        settings[k] = str(v) if isinstance(v, float) else v
    return settings


def redact(settings: Mapping[str, Any]) -> dict[str, Any]:
    """
    Return ``settings`` fit for a log line: secrets replaced, callables
    dropped.
    """
    return {
        k: ("***" if _SECRET_SETTING.search(k) else v)
        for k, v in settings.items()
        if not callable(v) and not k.endswith("_cb")
    }


def check_consumer_settings(settings: Mapping[str, Any]) -> None:
    """
    Create (and close at once) a consumer with ``settings``, so that a bad
    setting stops the daemon at start-up rather than the listener later.

    @raise ValueError: librdkafka refuses a setting; the message names it.
    """
    try:
        Consumer(dict(settings), logger=_Silent()).close()
    except (KafkaException, ValueError, TypeError) as e:
        raise ValueError(str(e.args[0] if e.args else e)) from None


class _Silent:
    """A logger for the throw-away consumer: librdkafka would write to stderr."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        pass


# --- the service -------------------------------------------------------------


class _Links:
    """
    Connection state the consumer thread writes and the reactor reads
    (plain attribute stores: atomic in CPython).
    """

    def __init__(self) -> None:
        self.connected = False
        self.joined = False
        self.assigned: list[str] = []
        self.error = ""


class EventListenerService(Service):
    """
    Consumes the configured topics on one thread of its own and applies each
    message through an L{EventHandler} on the reactor thread.

    ``broadcast`` mode joins a consumer group of its own (a unique id per
    instance), so every instance gets every partition; ``group`` mode joins
    ``kafka.group_id`` with the other instances.  Offsets are stored for
    commit only after a message was applied.
    """

    log = Logger()
    name = "events"

    def __init__(
        self,
        kafka: KafkaConfig,
        handler: EventHandler,
        reactor: IReactorFromThreads,
        instance: str | None = None,
        credentials: TokenProvider | None = None,
        *,
        watermark: Watermark | None = None,
        bounds: Mapping[str, float] | None = None,
        exchange: WatermarkExchange | None = None,
    ) -> None:
        """
        @param reactor: where the consumer thread hands its work; it must
            provide L{IReactorTime} as well (the stop timeout).
        @param instance: names this instance in its broadcast group's id.
        @param credentials: when the SASL password is an OAuth token: the
            consumer starts once the first token is there, and each renewed
            token is handed to it.
        @param watermark: the event watermark this listener advances (the
            cache reads it); one of its own by default.
        @param bounds: route type → ``max_staleness`` (for the log lines
            when the event lag crosses one).
        @param exchange: in ``group`` mode with a shared store, where the
            instances share their partition watermarks.
        """
        self.kafka = kafka
        self.credentials = credentials
        self._new_password: str | None = None
        self.handler = handler
        self.reactor = reactor
        # adapting checks now, not at stop time, that it keeps time too
        self.clock = IReactorTime(reactor)
        self.broadcast = kafka.mode == "broadcast"
        if self.broadcast:
            # unique per instance (a restarted instance starts afresh too)
            name = re.sub(r"[^A-Za-z0-9._-]", "_", instance or "apicache")[:64]
            self.group_id = f"{kafka.group_id}.broadcast.{name}.{uuid.uuid4().hex[:8]}"
        else:
            self.group_id = kafka.group_id
        self.settings = consumer_settings(kafka, self.group_id)
        self.links = _Links()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None
        self._seen: set[tuple[str, int]] = set()
        self._last_error_log: dict[int, float] = {}
        #: the event watermark; written on the reactor thread only
        if watermark is None:
            watermark = Watermark(self.clock, group=not self.broadcast, max_clock_skew=kafka.max_clock_skew)
        self.watermark = watermark
        self.lag = LagMonitor(self.watermark, self.clock, bounds or {}, exchange if not self.broadcast else None)
        # the consumer thread's own: per partition held, the offset below
        # which every message was applied (or skipped as not an event)
        self._applied: dict[Partition, int] = {}
        self._held: set[Partition] = set()
        self._next_query = 0.0
        self._next_metadata = 0.0

    # -- what the rest of the daemon reads --------------------------------

    def is_ready(self) -> bool:
        """
        Return whether a broker is reachable and the consumer has its
        partitions (for ``/readyz``).
        """
        links = self.links
        # a broadcast listener without partitions hears nothing (no such
        # topic?); in a group, more members than partitions is normal
        return links.connected and links.joined and (bool(links.assigned) or not self.broadcast)

    def info(self) -> dict[str, Any]:
        """
        Return the counters and state for ``GET /``: ``events_lag_s`` (now
        − W, ``None`` before any W) at the top level and among the
        ``events`` counters.
        """
        lag = self.watermark.lag()
        return {
            "events_lag_s": lag,
            "events": {
                **self.handler.info(),
                "events_lag_s": lag,
                "mode": self.kafka.mode,
                "group_id": self.group_id,
                "connected": self.links.connected,
                "partitions": len(self.links.assigned),
                "assigned": list(self.links.assigned),
            }
        }

    def metrics(self) -> Iterator[Metric]:
        """
        Yield the listener's Prometheus metric families.
        """
        h = self.handler
        yield CounterMetricFamily("apicache_events_received", "Kafka messages received.", value=h.received)
        yield CounterMetricFamily("apicache_events_applied", "Events applied to the cache.", value=h.applied)
        yield CounterMetricFamily("apicache_events_skipped", "Messages skipped: not an event.", value=h.skipped)
        yield CounterMetricFamily("apicache_events_failed", "Attempts to apply an event that failed (retried).", value=h.failed)
        yield GaugeMetricFamily(
            "apicache_events_last_applied_timestamp_seconds",
            "When the last event was applied (0: none yet).",
            value=h.last_applied or 0.0,
        )
        yield GaugeMetricFamily("apicache_kafka_ready", "1 when the event listener is connected and assigned.", value=float(self.is_ready()))
        yield GaugeMetricFamily("apicache_kafka_partitions", "Partitions assigned to this instance.", value=len(self.links.assigned))
        lag = self.watermark.lag()
        yield GaugeMetricFamily(
            "apicache_events_lag_seconds",
            "Seconds since the event watermark W: every event appended before it was applied (+Inf before any).",
            value=float("inf") if lag is None else lag,
        )

    # -- the service ------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "event listener starting: {mode} mode, group {group}, topics {topics}, settings {settings}",
            mode=self.kafka.mode,
            group=self.group_id,
            topics=",".join(self.kafka.topics),
            settings=json.dumps(redact(self.settings), sort_keys=True),
        )
        self._stop.clear()
        self.lag.start()
        if self.credentials is None:
            self._start_thread()
            return
        self.log.info("event listener waiting for its first Kafka token")
        self.credentials.subscribe(self._renewed)
        self.credentials.when_ready().addCallback(self._start_thread)

    def _start_thread(self, password: str | None = None) -> None:
        if not self.running or self._thread is not None:
            return
        if password is not None:
            self.settings = {"sasl.password": password, **self.settings}
        self._stopped = Deferred()
        self._thread = threading.Thread(target=self._run, name="apicache-kafka", daemon=True)
        self._thread.start()

    def _renewed(self, password: str) -> None:
        # picked up by the consumer thread before its next poll
        self._new_password = password

    def stopService(self) -> Deferred[None]:
        """
        Stop consuming, commit what was applied and close the consumer.
        Fires when that is done, or after 5 s at most.
        """
        super().stopService()
        self._stop.set()
        self.lag.stop()
        stopped = self._stopped
        if stopped is None or self._thread is None:
            return succeed(None)
        # a consumer thread stuck in librdkafka must not hold up the
        # daemon's shutdown: wait for it at most _STOP_SECONDS
        d: Deferred[None] = Deferred()

        def done(_: object) -> None:
            if not d.called:
                d.callback(None)

        def late(result: object, timeout: float) -> None:
            self.log.warn("the event listener did not close within {s} s", s=timeout)

        stopped.addBoth(done)
        d.addTimeout(_STOP_SECONDS, self.clock, onTimeoutCancel=late)
        return d

    # -- the consumer thread ----------------------------------------------

    def _from_thread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.reactor.callFromThread(f, *args, **kwargs)

    def _due(self, complaint: int) -> bool:
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

    def _on_error(self, error: KafkaError) -> None:
        code = error.code()
        if code in (KafkaError._ALL_BROKERS_DOWN, KafkaError._AUTHENTICATION, KafkaError._SSL):
            self.links.connected = False
        self.links.error = error.str()
        # a broker that is away reports the same error twice a second
        if self._due(code):
            self._from_thread(self.log.warn, "kafka: {error}", error=error.str(), code=error.name())

    def _on_stats(self, raw: str) -> None:
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

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # (confluent-kafka assigns the partitions itself after this returns,
        # eagerly or incrementally as the group's protocol says, unless we did)
        if self.broadcast and partitions:
            partitions = self._broadcast_positions(consumer, partitions)
            consumer.assign(partitions)
        elif partitions and not self.watermark.shared:
            # group mode, a store of this instance's own: what the previous
            # holder applied never reached this cache
            self._skipped("partitions taken over in group mode")
        held = [(p.topic, p.partition) for p in partitions]
        self._held.update(held)
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

    def _broadcast_positions(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
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
            self._skipped("started at the end of the topic")
        return out

    def _skipped(self, why: str) -> None:
        """
        Note (consumer thread) that messages were skipped now: entries
        fetched before are judged by their fetch time alone.
        """
        at = self.clock.seconds()
        self._from_thread(self.watermark.skip, at)
        self._from_thread(self.log.info, "kafka: messages skipped ({why}): entries fetched before are judged by their age alone", why=why)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit(consumer)
        gone = {f"{p.topic}:{p.partition}" for p in partitions}
        self.links.assigned = [a for a in self.links.assigned if a not in gone]
        revoked = [(p.topic, p.partition) for p in partitions]
        self._held.difference_update(revoked)
        self._from_thread(self.watermark.revoke, revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.links.assigned = []
        self.links.joined = False
        self._held.clear()
        self._from_thread(self.watermark.revoke, None)
        self._from_thread(self.log.warn, "kafka: partitions lost; rejoining the group")

    def _commit(self, consumer: Consumer) -> None:
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as e:
            if e.args[0].code() != KafkaError._NO_OFFSET:
                self._from_thread(self.log.warn, "kafka: commit failed: {error}", error=e.args[0].str())

    def _run(self) -> None:
        try:
            consumer = Consumer(
                {**self.settings, "error_cb": self._on_error, "stats_cb": self._on_stats},
                logger=_LibrdkafkaLog(self),
            )
            consumer.subscribe(list(self.kafka.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        except Exception as e:  # noqa: BLE001 - reported, and the daemon serves on
            self.links.error = str(e)
            self._from_thread(self.log.error, "kafka: the event listener could not start: {error}", error=str(e))
            self._from_thread(self._finished)
            return
        try:
            self._consume(consumer)
        except Exception:  # noqa: BLE001
            self._from_thread(self.log.failure, "kafka: the event listener stopped", Failure())
        finally:
            try:
                self._commit(consumer)
                consumer.close()
            except Exception as e:  # noqa: BLE001
                self._from_thread(self.log.warn, "kafka: close failed: {error}", error=str(e))
            self.links.connected = False
            self.links.joined = False
            self._from_thread(self._finished)

    def _finished(self) -> None:
        self.log.info("event listener stopped")
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    def _consume(self, consumer: Consumer) -> None:
        while not self._stop.is_set():
            try:
                self._consume_once(consumer)
                self._watch_end_offsets(consumer)
            except Exception:  # noqa: BLE001 - the listener must go on
                self._from_thread(self.log.failure, "kafka: unexpected error in the event listener", Failure())
                self._stop.wait(_RETRY_SECONDS)

    def _consume_once(self, consumer: Consumer) -> None:
        """
        Take the messages that have arrived (waiting a moment for the
        first), apply them on the reactor thread, and store the offsets of
        those applied or skipped.
        """
        password, self._new_password = self._new_password, None
        if password is not None and self.credentials is not None:
            # new connections use it; existing ones stay authenticated
            consumer.set_sasl_credentials(self.credentials.username, password)
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
                self._on_error(error)
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
            self._applied[p] = max(self._applied.get(p, 0), (m.offset() or 0) + 1)
            kind, ms = m.timestamp()
            if kind == TIMESTAMP_LOG_APPEND_TIME and ms > 0:
                appended[p] = ms / 1000.0
        for p, offset in ends:
            self._applied[p] = max(self._applied.get(p, 0), offset)
        for p, at in appended.items():
            self._from_thread(self.watermark.appended, p, at)

    def _watch_end_offsets(self, consumer: Consumer) -> None:
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
        held = sorted(p for p in self._held if p in self._applied)
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
            self._applied, [((a.topic, a.partition), a.offset) for a in answers if a.error is None]
        )
        if truncated:
            # (v3) the broker lost or truncated its log: a skip
            self._skipped("an end offset below the offset applied")
        if vouched:
            self._from_thread(self.watermark.vouch, vouched, sent)

    def _list_partitions(self, consumer: Consumer) -> None:
        found: list[Partition] = []
        for topic in self.kafka.topics:
            try:
                metadata = consumer.list_topics(topic, timeout=_QUERY_TIMEOUT)
            except KafkaException:
                return  # keep what was listed last
            t = metadata.topics.get(topic)
            if t is not None and t.error is None:
                found.extend((topic, n) for n in t.partitions)
        self._next_metadata = self.clock.seconds() + _METADATA_SECONDS
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


class _LibrdkafkaLog:
    """
    librdkafka's own log lines (warnings and worse), sent to the reactor's
    log.  confluent-kafka calls ``log(level, fmt, *args)`` like the logging
    module's loggers.
    """

    def __init__(self, service: EventListenerService) -> None:
        self._service = service

    def log(self, level: int, fmt: str, *args: Any) -> None:
        # confluent-kafka passes (facility, client name, text)
        if len(args) == 3 and args[0] == "OFFSET" and "offset reset" in str(args[2]):
            # a committed offset out of range, reset by auto.offset.reset:
            # the messages in between are never applied
            self._service._skipped("offset reset")
        # connection failures come through the error callback as well
        if level < 30 or (args and args[0] == "FAIL"):  # 30: logging.WARNING
            return
        try:
            text = fmt % args
        except (TypeError, ValueError):
            text = fmt
        svc = self._service
        # the same complaint every reconnect attempt: once in a while is enough
        if svc._due(hash(text[:60])):
            svc._from_thread(svc.log.warn, "librdkafka: {line}", line=text[:500])
