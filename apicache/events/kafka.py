"""
The event listener service (SPEC.md section 5) and its librdkafka settings:
L{EventListenerService} runs the consumer loop (L{apicache.events.consumer})
on a thread of its own, waits for the first OAuth token when Kafka needs one,
and stops the thread, committing what was applied, when the daemon stops; it
also reports readiness, state and metrics.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaException
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger

from apicache.config import KafkaConfig
from apicache.events.consumer import ConsumerLinks, ConsumerLoop
from apicache.events.handling import EventHandler
from apicache.events.lag import LagMonitor
from apicache.events.watermark import Watermark, WatermarkExchange

if TYPE_CHECKING:
    from apicache.events.oauth import TokenProvider

__all__ = ["EventListenerService", "consumer_settings", "redact", "check_consumer_settings"]

#: librdkafka settings whose values are never logged.
_SECRET_SETTING = re.compile(r"password|secret|token|key$|\.pem$|jaas", re.IGNORECASE)

#: the longest a stop waits for the consumer thread
_STOP_SECONDS = 5.0


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



# --- the service -------------------------------------------------------------


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
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None
        #: the event watermark; written on the reactor thread only
        if watermark is None:
            watermark = Watermark(self.clock, group=not self.broadcast, max_clock_skew=kafka.max_clock_skew)
        self.watermark = watermark
        self.lag = LagMonitor(self.watermark, self.clock, bounds or {}, exchange if not self.broadcast else None)
        #: the consumer thread's work
        self.loop = ConsumerLoop(
            kafka.topics,
            handler,
            reactor,
            watermark,
            broadcast=self.broadcast,
            username=credentials.username if credentials is not None else None,
        )
        #: the connection state the loop writes (readiness)
        self.links: ConsumerLinks = self.loop.links

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
        self.loop.restart()
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
        self._thread = threading.Thread(
            target=self.loop.run, args=(self.settings, self._finished), name="apicache-kafka", daemon=True
        )
        self._thread.start()

    def _renewed(self, password: str) -> None:
        # picked up by the consumer thread before its next poll
        self.loop.renew(password)

    def stopService(self) -> Deferred[None]:
        """
        Stop consuming, commit what was applied and close the consumer.
        Fires when that is done, or after 5 s at most.
        """
        super().stopService()
        self.loop.stop()
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

    def _finished(self) -> None:
        self.log.info("event listener stopped")
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)
