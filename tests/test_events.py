"""
Kafka events against the real daemon (``twistd apicache``) and a real
Kafka-protocol broker (Tansu, memory storage), with the upstream stub.

Every check of something asynchronous polls for up to 2 s, except the
readiness waits that include a consumer-group join (about 3 s on Tansu with
the short timeouts of ``KAFKA_EXTRA`` in tests/daemon_support.py).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from daemon_support import JOIN_SECONDS, OBJECT_EVENTS, kafka_config, readyz, wait_ready
from daemon_support import events_info as info

from apicache.harness.demo import Answer, UpstreamStub
from apicache.harness.launchers import Daemon, KafkaBroker, Reply
from apicache.harness.polling import wait_until

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    broker = KafkaBroker().start()
    yield broker
    broker.stop()


@pytest.fixture
def topic(kafka: KafkaBroker) -> str:
    name = f"events-{uuid.uuid4().hex[:10]}"
    kafka.create_topic(name, partitions=2)
    return name


def wait_applied(d: Daemon, n: int, timeout: float = 2.0) -> dict[str, Any]:
    """
    Wait until ``n`` events were applied; fail if more were.
    """
    found = wait_until(lambda: (lambda e: e if e["applied"] >= n else None)(info(d)), timeout, 0.02, "the events to be applied")
    assert found["applied"] == n, found
    return found  # type: ignore[no-any-return]


def obj(n: object) -> str:
    return f"/server/object({n})/header"


def prime(d: Daemon, path: str, *tenants: str) -> None:
    """
    Cache ``path`` for each tenant and check that it is cached.
    """
    for t in tenants:
        d.get(path, t)
        assert d.get(path, t).cache == "HIT"


@pytest.fixture
def event_daemon(make_daemon: Callable[..., Daemon], kafka: KafkaBroker, topic: str) -> Callable[..., Daemon]:
    def make(events: list[dict[str, Any]] | None = None, **more: Any) -> Daemon:
        d = make_daemon(kafka_config(kafka, topic, events, **more))
        wait_ready(d)
        return d

    return make


# --- invalidation ------------------------------------------------------------


def test_event_without_tenant_invalidates_every_tenant_and_with_tenant_only_that_one(event_daemon, kafka, topic):
    """
    Several matching [[events]] entries all apply; ids may be integers.
    """
    rules = OBJECT_EVENTS + [{"types": ["object.update"], "route": "template", "id_field": "objectid"}]
    d = event_daemon(rules)
    prime(d, obj(1), "t1", "t2")
    prime(d, obj(2), "t1")
    prime(d, "/server/templates/1", "t1")

    kafka.send(topic, {"type": "object.update", "objectid": "1"})
    wait_applied(d, 1)
    assert d.get(obj(1), "t1").cache == "MISS"
    assert d.get(obj(1), "t2").cache == "MISS"
    assert d.get("/server/templates/1", "t1").cache == "MISS"
    assert d.get(obj(2), "t1").cache == "HIT"

    kafka.send(topic, {"type": "object.delete", "objectid": 1, "org_id": "t1"})
    wait_applied(d, 2)
    assert d.get(obj(1), "t1").cache == "MISS"
    assert d.get(obj(1), "t2").cache == "HIT"
    # object.delete is not among the template rule's types
    assert d.get("/server/templates/1", "t1").cache == "HIT"

    counters = info(d)
    assert (counters["received"], counters["applied"], counters["skipped"]) == (2, 2, 0)
    assert counters["last_applied_at"] == pytest.approx(time.time(), abs=10)


def test_invalid_messages_are_skipped_and_the_next_event_applies(event_daemon, kafka, topic):
    d = event_daemon()
    prime(d, obj("a-1"), "t1")
    big = b'{"type": "object.update", "objectid": "' + b"x" * 900_000 + b'"}'
    garbage: list[Any] = [
        b"not json",
        b"\xff\xfe\x00\x01",
        b'{"type": "object.update", "objectid": "\xff"}',
        b"[1, 2]",
        b'"a string"',
        b"42",
        b"null",
        b"",
        b"[" * 100_000,
        {"objectid": "a-1"},
        {"type": "object.update"},
        {"type": "object.update", "objectid": {"id": 1}},
        {"type": "object.update", "objectid": True},
        {"type": "object.update", "objectid": 1.5},
        {"type": "object.update", "objectid": ""},
        {"type": "object.update", "objectid": "a-1", "org_id": ["t1"]},
        {"type": "object.update", "objectid": "a-1", "org_id": "not a tenant!"},
        {"type": 7, "objectid": "a-1"},
        {"type": "no.such.type", "objectid": "a-1"},
        big,
    ]
    kafka.send(topic, *garbage, partition=0)
    kafka.send(topic, {"type": "object.update", "objectid": "a-1", "org_id": "t1"}, partition=0)
    counters = wait_applied(d, 1)
    assert counters["skipped"] == len(garbage)
    assert counters["received"] == len(garbage) + 1
    assert d.get(obj("a-1"), "t1").cache == "MISS"
    assert d.request("GET", "/healthz").status == 200
    assert readyz(d).status == 200
    skipped = [line for line in d.log_lines() if "not an event" in line["message"]]
    assert len(skipped) == len(garbage)
    # logged, not in full
    assert max(len(json.dumps(line)) for line in skipped) < 2000
    metrics = d.request("GET", "/metrics").body.decode()
    assert f"apicache_events_skipped_total {float(len(garbage))}" in metrics
    assert "apicache_events_applied_total 1.0" in metrics


# --- refresh -----------------------------------------------------------------


def test_refresh_serves_the_stale_copy_then_the_new_body(event_daemon, kafka, topic, upstream: UpstreamStub):
    d = event_daemon([dict(OBJECT_EVENTS[0], action="refresh")])
    path = "/api/object(5)/header"
    upstream.set(path, body=b"old")
    prime(d, obj(5), "t1")
    upstream.set(path, body=b"new")

    kafka.send(topic, {"type": "object.update", "objectid": 5, "org_id": "t1"})
    wait_applied(d, 1)
    stale = d.get(obj(5), "t1")
    assert (stale.status, stale.cache, stale.body) == (200, "STALE", b"old")
    assert "age" in stale.headers
    fresh = wait_until(lambda: (lambda r: r if r.cache == "HIT" else None)(d.get(obj(5), "t1")), 2.0, 0.02, "the refreshed entry to be a hit")
    assert fresh.body == b"new"
    assert upstream.calls(path) == 2  # one background re-fetch

    # a re-fetch that is not a 200 drops the entry
    upstream.set(path, status=404, body=b"gone")
    kafka.send(topic, {"type": "object.update", "objectid": 5})
    wait_applied(d, 2)
    assert d.get(obj(5), "t1").cache == "STALE"
    gone = wait_until(lambda: (lambda r: r if r.status == 404 else None)(d.get(obj(5), "t1")), 2.0, 0.02, "the deleted object to answer 404")
    assert gone.cache == "MISS"
    assert gone.body == b"gone"


# --- tags (SPEC.md section 5: [[events]] tags) ----------------------------------

TAG_EVENTS = [
    {"types": ["object.update"], "tags": ["object:{objectid}"], "tenant_field": "org_id"},
    {"types": ["object.touch"], "tags": ["object:{objectid}"], "action": "refresh"},
]


def test_tag_event_purges_the_list_pages_holding_the_object(event_daemon, kafka, topic, upstream: UpstreamStub):
    """
    The list pages' answers carry ``Surrogate-Key: object:N ...``: an event
    naming object 42 drops (or refreshes) every page holding it.
    """
    d = event_daemon(TAG_EVENTS, upstream={"tags_header": "surrogate-key"})
    json_type = {"Content-Type": "application/json"}
    upstream.set("/api/templates/p1", headers={**json_type, "Surrogate-Key": "object:42 object:43"}, body=b"p1")
    upstream.set("/api/templates/p2", headers={**json_type, "Surrogate-Key": "object:44"}, body=b"p2")
    prime(d, "/server/templates/p1", "t1", "t2")
    prime(d, "/server/templates/p2", "t1")

    kafka.send(topic, {"type": "object.update", "objectid": 42, "org_id": "t1"})
    wait_applied(d, 1)
    assert d.get("/server/templates/p1", "t1").cache == "MISS"
    assert d.get("/server/templates/p1", "t2").cache == "HIT"
    assert d.get("/server/templates/p2", "t1").cache == "HIT"

    kafka.send(topic, {"type": "object.touch", "objectid": 43})
    wait_applied(d, 2)
    for tenant in ("t1", "t2"):
        assert d.get("/server/templates/p1", tenant).cache == "STALE"
    metrics = d.request("GET", "/metrics").body.decode()
    assert 'apicache_tag_purges_total{source="event"} 2.0' in metrics


def test_event_during_a_slow_fetch_wins(event_daemon, kafka, topic, upstream: UpstreamStub):
    """
    The race rule: the answer of a fetch that was in flight when the event
    arrived goes to its caller but is not stored.
    """
    d = event_daemon()
    path = "/api/object(9)/header"
    upstream.set(path, delay=1.5)
    answers: list[Reply] = []
    slow = threading.Thread(target=lambda: answers.append(d.get(obj(9), "t1")))
    slow.start()
    wait_until(lambda: upstream.calls(path) == 1, 2.0, 0.02, "the upstream to be called")
    kafka.send(topic, {"type": "object.update", "objectid": "9"})
    wait_applied(d, 1)
    assert upstream.calls(path) == 1 and not answers, "the fetch ended before the event applied"
    slow.join(5)
    assert answers[0].cache == "MISS" and answers[0].status == 200
    upstream.set(path)
    assert d.get(obj(9), "t1").cache == "MISS"
    assert d.get(obj(9), "t1").cache == "HIT"
    assert upstream.calls(path) == 2


# --- stale_if_error ----------------------------------------------------------


def test_stale_if_error_serves_stale_within_the_window_then_fails(make_daemon, upstream: UpstreamStub):
    routes = [
        {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 1, "stale_if_error": 1.5}
    ]
    d = make_daemon({"routes": routes})
    started = time.monotonic()
    assert d.get(obj(1)).cache == "MISS"
    first = d.get(obj(2))
    assert first.cache == "MISS"
    time.sleep(max(0.0, started + 1.2 - time.monotonic()))

    upstream.set("/api/object(2)/header", status=503, body=b"down")
    failed_5xx = d.get(obj(2))
    assert (failed_5xx.status, failed_5xx.cache, failed_5xx.body) == (200, "STALE", first.body)
    assert int(failed_5xx.headers["age"]) >= 1

    upstream.stop()
    # handler threads still serve the daemon's kept-alive connections: drop those too
    upstream.default = Answer(drop=True)
    unreachable = d.get(obj(1))
    assert (unreachable.status, unreachable.cache) == (200, "STALE")

    time.sleep(max(0.0, started + 2.8 - time.monotonic()))
    after = d.get(obj(1))
    assert after.status == 502
    assert after.json()["error"] == "upstream_unreachable"


# --- broker faults -----------------------------------------------------------


@pytest.mark.slow
def test_broker_down_then_restarted(make_daemon, upstream):
    """
    The daemon serves with the broker away, /readyz names kafka, and the
    listener picks up again when the broker is back (Tansu keeps nothing
    across a restart: the topic is created again).
    """
    broker = KafkaBroker()
    topic = "restart"
    d = make_daemon(kafka_config(broker, topic))
    try:
        r = readyz(d)
        assert (r.status, r.json()) == (503, {"ready": False, "failing": ["kafka"]})
        assert d.get(obj(1), "t1").cache == "MISS"
        assert d.get(obj(1), "t1").cache == "HIT"

        broker.start()
        broker.create_topic(topic)
        wait_ready(d)
        broker.send(topic, {"type": "object.update", "objectid": "1"})
        wait_applied(d, 1)
        assert d.get(obj(1), "t1").cache == "MISS"

        broker.stop()
        stopped = time.monotonic()
        r = wait_until(lambda: (lambda r: r if r.status == 503 else None)(readyz(d)), 5.0, 0.1, "/readyz to answer 503")
        assert r.json() == {"ready": False, "failing": ["kafka"]}
        # wall clock: the real daemon notices the real broker gone within 5 s
        assert time.monotonic() - stopped < 5.0
        assert d.get(obj(1), "t1").cache == "HIT"  # still serving
        cpu_before = _cpu_seconds(d)
        time.sleep(2.0)
        # CPU seconds of the real daemon's process over 2 s of the wall clock
        assert _cpu_seconds(d) - cpu_before < 0.5, "busy while the broker is away"

        broker.start()
        broker.create_topic(topic)
        wait_ready(d)
        broker.send(topic, {"type": "object.update", "objectid": "1"})
        wait_applied(d, 2, timeout=JOIN_SECONDS)
        assert d.get(obj(1), "t1").cache == "MISS"
        assert d.stop() in (0, -15)
    finally:
        broker.stop()


def test_a_topic_created_after_start_up_is_consumed(make_daemon, kafka):
    topic = f"late-{uuid.uuid4().hex[:10]}"
    d = make_daemon(kafka_config(kafka, topic))
    time.sleep(1.0)
    r = readyz(d)
    assert (r.status, r.json()["failing"]) == (503, ["kafka"])
    kafka.create_topic(topic)
    wait_ready(d, timeout=12.0)  # metadata is refreshed every 5 s
    prime(d, obj(3), "t1")
    kafka.send(topic, {"type": "object.update", "objectid": 3})
    wait_applied(d, 1)
    assert d.get(obj(3), "t1").cache == "MISS"


def _cpu_seconds(d: Daemon) -> float:
    assert d.proc is not None
    with open(f"/proc/{d.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- group mode --------------------------------------------------------------


def _committed(broker: KafkaBroker, group: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)}
    finally:
        c.close()


@pytest.mark.slow
def test_group_mode_applies_each_event_once_and_resumes_from_committed_offsets(make_daemon, kafka, topic):
    group = f"g-{uuid.uuid4().hex[:8]}"
    config = kafka_config(kafka, topic, mode="group", group_id=group)
    a = make_daemon(config)
    b = make_daemon(config)
    wait_ready(a)
    wait_ready(b)
    wait_until(lambda: info(a)["partitions"] == 1 and info(b)["partitions"] == 1, JOIN_SECONDS, 0.1, "each daemon to hold one partition")

    ends = {0: 0, 1: 0}

    def send(ids: range) -> None:
        for i in ids:
            [(p, o)] = kafka.send(topic, {"type": "object.update", "objectid": i}, partition=i % 2)
            ends[p] = o + 1

    send(range(0, 10))
    wait_until(lambda: info(a)["applied"] + info(b)["applied"] == 10, 2.0, 0.02, "10 events to be applied")
    assert (info(a)["applied"], info(b)["applied"]) == (5, 5)
    assert info(a)["received"] + info(b)["received"] == 10

    # a stops: it commits what it applied, b takes over from there
    [held] = info(a)["assigned"]
    a_partition = int(held.rsplit(":", 1)[1])
    stopping = time.monotonic()
    assert a.stop() in (0, -15)
    # wall clock: the real daemon commits and exits within 5 s
    assert time.monotonic() - stopping < 5.0
    committed = _committed(kafka, group, topic)
    assert committed[a_partition] == ends[a_partition]
    wait_until(lambda: info(b)["partitions"] == 2, JOIN_SECONDS, 0.1, "b to hold both partitions")
    send(range(10, 16))
    wait_until(lambda: info(b)["applied"] == 11, 2.0, 0.02, "b to apply the 11th event")

    # a comes back: the partition it gets resumes at b's committed offset
    a2 = make_daemon(config)
    wait_ready(a2)
    wait_until(lambda: info(a2)["partitions"] == 1 and info(b)["partitions"] == 1, JOIN_SECONDS, 0.1, "each daemon to hold one partition again")
    send(range(16, 20))
    wait_until(lambda: info(b)["applied"] + info(a2)["applied"] == 15, 2.0, 0.02, "15 events to be applied")
    time.sleep(0.3)
    assert info(b)["received"] + info(a2)["received"] == 15, "an event was applied twice"
    assert a2.stop() in (0, -15)
    assert b.stop() in (0, -15)
    assert _committed(kafka, group, topic) == ends


# --- configuration -----------------------------------------------------------


def test_a_setting_librdkafka_refuses_is_a_configuration_error(make_daemon, kafka):
    d = make_daemon(
        {"kafka": {"bootstrap_servers": kafka.bootstrap, "topics": ["x"], "extra": {"no.such.setting": 1}}},
        start=False,
    )
    done = subprocess.run(d.argv, cwd=d.cwd, env=d.env, capture_output=True, timeout=30)
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "kafka" in lines[0] and "no.such.setting" in lines[0]


def test_secrets_are_never_logged(make_daemon, kafka, topic):
    secret = "pw-" + uuid.uuid4().hex
    config = kafka_config(kafka, topic)
    config["kafka"].update(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="user", sasl_password=secret
    )
    d = make_daemon(config)
    wait_until(lambda: "librdkafka" in d.logs() or "kafka:" in d.logs(), 5.0, 0.1, "the Kafka client's log line")
    assert d.stop() in (0, -15)
    logs = d.logs()
    assert secret not in logs
    started = next(line for line in d.log_lines() if line["message"].startswith("event listener starting"))
    settings = json.loads(started["settings"])
    assert settings["sasl.password"] == "***"
    assert settings["sasl.username"] == "user"
    assert settings["security.protocol"] == "SASL_PLAINTEXT"
    assert settings["session.timeout.ms"] == 6000
