"""
Regression tests of issue 10 against a real Redis: values read from Redis
are validated before use (finding 5), and a malformed message on the
invalidation channel neither raises nor loses the messages after it
(finding 7).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from daemon_support import metric
from daemon_support import ready as daemon_ready
from redis_support import ready
from store_contract import entry, key, store_entry

from apicache.harness.launchers import Daemon, RedisServer
from apicache.harness.polling import wait_until_async
from apicache.store.interface import CachedResponse
from apicache.store.redis import RedisStore, encode_entry, encode_key
from apicache.store.redis.codec import entry_problem, tag_record_key

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

OBJ = "/server/object(42)/header"


def poisoned(headers: tuple[tuple[bytes, bytes], ...], status: int = 200) -> CachedResponse:
    now = time.time()
    return CachedResponse(status, headers, b"poison", stored_at=now, expires_at=now + 300, stale_until=now + 600)


BAD = {
    "crlf in a value": poisoned(((b"content-type", b"text/plain\r\nSet-Cookie: s=1\r\nX-Injected: yes"),)),
    "lf in a value": poisoned(((b"x-a", b"1\nX-Injected: yes"),)),
    "nul in a value": poisoned(((b"x-a", b"1\x00"),)),
    "crlf in a name": poisoned(((b"X-Injected: yes\r\nx-a", b"1"),)),
    "space in a name": poisoned(((b"x a", b"1"),)),
    "empty name": poisoned(((b"", b"1"),)),
    "status 0": poisoned((), status=0),
    "status 99": poisoned((), status=99),
    "status 600": poisoned((), status=600),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_entry_problem_names_what_is_wrong(case: str) -> None:
    assert entry_problem(BAD[case]) is not None


def test_entry_problem_accepts_what_the_cache_stores() -> None:
    assert entry_problem(entry()) is None
    assert entry_problem(poisoned(((b"x-weird!#$%&'*+-.^_`|~", b"a\tb \x7f\xff"),), status=599)) is None


@pytest.mark.parametrize("case", sorted(BAD))
@pytest_twisted.ensureDeferred
async def test_a_bad_value_in_redis_is_a_miss_counted_and_logged_once(
    stores: Callable[..., RedisStore], case: str, capture_logs: list[dict[str, Any]]
) -> None:
    s = await ready(stores())
    await s.commands.execute("SET", encode_key(s.prefix, key()), encode_entry(BAD[case]), "PX", 60000)
    assert await s.load(key()) is None
    assert s.lookup(key()) is None
    assert await s.load(key()) is None
    assert s.counters["bad_values"] == 2
    warned = [e for e in capture_logs if "bad value in Redis" in e.get("log_format", "")]
    assert len(warned) == 1
    assert b"poison" not in repr(warned).encode()


@pytest_twisted.ensureDeferred
async def test_a_damaged_tag_record_is_a_miss_counted(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores())
    assert await store_entry(s, key(), entry(tags=("list:1",)))
    s.local.clear(None)
    await s.commands.execute("SET", tag_record_key(s.prefix, key()), b"1 list%3A1 \xff")
    assert await s.load(key()) is None
    assert s.counters["bad_values"] == 1


@pytest.fixture
def capture_logs() -> Any:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_a_poisoned_value_is_never_replayed_by_the_daemon(
    make_daemon: Callable[..., Daemon], redis_server: RedisServer
) -> None:
    """A CRLF header value written straight into Redis does not reach callers as headers."""
    prefix = f"poison-{uuid.uuid4().hex[:8]}"
    cfg = {"store": {"backend": "redis", "redis_url": redis_server.url, "key_prefix": prefix}}
    a = daemon_ready(make_daemon(cfg))
    assert a.get(OBJ).cache == "MISS"
    keys = subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), "--scan", "--pattern", f"{prefix}:e:*"],
        capture_output=True, check=True,
    ).stdout.split()
    assert len(keys) == 1
    value = encode_entry(BAD["crlf in a value"])
    out = subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), "-x", "SET", keys[0]],
        input=value, capture_output=True, check=True,
    ).stdout
    assert out.strip() == b"OK"
    b = daemon_ready(make_daemon(cfg))
    for _ in range(3):  # a miss on the bad value, then hits on the fast path
        r = b.get(OBJ)
        assert r.status == 200
        assert "x-injected" not in r.headers and "set-cookie" not in r.headers
        assert r.body != b"poison"
    assert metric(b, "apicache_store_bad_values") >= 1


# -- finding 7: the invalidation channel -----------------------------------------

MALFORMED = [
    b"not json",
    b"{}",
    b'{"a": 1, "b": 2, "c": 3}',
    b"[]",
    b'["other"]',
    b'["other", "i", "t1"]',
    b'["other", "i", "t1", "object", "42"]',
    b'["other", "i", 5, "object", ["42"]]',
    b'["other", "d", null, "object", ["42"], "v"]',
    b'["other", "c"]',
    b'["other", "x", "t1"]',
    b'[1, "c", null]',
    b'["other", "g", "t1", "object:42"]',
    b'["other", "g", "t1", 42, false]',
    b'["other", "g", "t1", "object:42", "yes"]',
    b"\xff\xfe",
]

PUBLISH_ALL = "for i, m in ipairs(ARGV) do redis.call('PUBLISH', KEYS[1], m) end return #ARGV"


@pytest_twisted.ensureDeferred
async def test_malformed_invalidations_are_skipped_and_the_rest_of_the_batch_applied(
    stores: Callable[..., RedisStore],
) -> None:
    shared = f"inv-{uuid.uuid4().hex[:8]}"
    a = await ready(stores(prefix=shared))
    b = await ready(stores(prefix=shared))
    others = [key(params=(str(i),)) for i in range(len(MALFORMED))]
    for k in [key(), *others]:
        await store_entry(a, k)
        await b.load(k)
        assert b.lookup(k) is not None
    # one script run: every message reaches b in one read, the bad ones
    # interleaved with valid invalidations
    messages: list[bytes] = []
    for bad, k in zip(MALFORMED, others, strict=True):
        messages.append(bad)
        messages.append(json.dumps(["other", "i", "t1", "object", list(k.params)]).encode())
    messages.append(json.dumps(["other", "d", "t1", "object", ["42"], key().variant]).encode())
    await a.commands.execute("EVAL", PUBLISH_ALL, 1, a.channel, *messages)
    await wait_until_async(lambda: b.lookup(key()) is None, 2, 0.01, "b to drop the entry")
    assert all(b.lookup(k) is None for k in others)
    assert b.counters["bad_messages"] == len(MALFORMED)
    assert b.subscriber.protocol is not None  # the subscription stayed up
