"""
Regression tests of issue 19, store side (SPEC.md section 3, "Tags" and
"Stored values are untrusted"): one tenant's tag purges never touch another
tenant's entries, in the memory store and with Redis.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
import pytest_twisted
from daemon_support import metric
from daemon_support import ready as daemon_ready
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_support import ready, sleep
from store_contract import entry, key, store_entry
from twisted.internet.defer import DeferredList
from twisted.internet.task import Clock

from apicache.cache.keys import CacheKey
from apicache.harness.launchers import Daemon, RedisServer
from apicache.harness.polling import wait_until_async
from apicache.store import tagindex
from apicache.store.interface import CachedResponse
from apicache.store.memory import MemoryStore
from apicache.store.redis import RedisStore, encode_entry, encode_key
from apicache.store.redis import store as redis_store_module
from apicache.store.redis.store import TAG_FETCH_HORIZON
from apicache.store.tagindex import MAX_GENERATIONS

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

OBJ = "/server/object(42)/header"

#: The purges of the attack in issue 19: past the 65,536 generations the
#: tag index used to keep for every tenant together.
STORM = 70_000


def random_tags(n: int, seed: int = 19) -> list[str]:
    """
    Return ``n`` distinct tags that no entry carries.
    """
    rng = random.Random(seed)
    return [f"gone:{rng.getrandbits(64):016x}:{i}" for i in range(n)]


def acme_keys(n: int = 50) -> list[CacheKey]:
    return [key("acme", params=(str(i),)) for i in range(n)]


# -- finding: tag purges stay within their tenant ------------------------------


def test_one_tenants_purges_never_drop_another_tenants_tagged_entries() -> None:
    """
    After 70k purges of random tags by globex, every tagged entry of acme is
    still a hit, and so is every entry of globex whose tags it did not purge.
    """
    assert STORM > MAX_GENERATIONS
    clock = Clock()
    store = MemoryStore(1 << 30, clock=clock)
    acme = acme_keys()
    for i, k in enumerate(acme):
        assert store.put_now(k, entry(tags=(f"object:{i}", "objects")), 0)
    own = key("globex", params=("kept",))
    assert store.put_now(own, entry(tags=("kept",)), 0)
    acme_token = store._epoch
    for tag in random_tags(STORM):
        store.purge_tag("globex", tag)
    clock.advance(0)
    assert sum(store.lookup(k) is not None for k in acme) == len(acme)
    assert store.lookup(own) is not None
    # a fetch acme began before the storm still stores its tagged answer
    late = key("acme", params=("late",))
    assert store.put_now(late, entry(tags=("object:late",)), acme_token)
    # and purges still work, for acme and for globex
    store.purge_tag("acme", "object:3")
    store.purge_tag("globex", "kept")
    clock.advance(0)
    assert store.lookup(acme[3]) is None and store.lookup(acme[4]) is not None
    assert store.lookup(own) is None


def test_a_purge_storm_by_every_tenant_purges_still_keeps_other_tags() -> None:
    """
    The same holds for purges of every tenant (an admin's): entries whose
    tags were not purged stay.
    """
    clock = Clock()
    store = MemoryStore(1 << 30, clock=clock)
    acme = acme_keys(10)
    for i, k in enumerate(acme):
        assert store.put_now(k, entry(tags=(f"object:{i}",)), 0)
    for tag in random_tags(STORM, seed=7):
        store.purge_tag(None, tag)
    clock.advance(0)
    assert all(store.lookup(k) is not None for k in acme)


def test_a_purged_entry_whose_generation_is_forgotten_is_never_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Forgetting a generation never brings back what it purged: a drop whose
    entries were not freed yet frees them first, a refresh marks them stale
    first, and a fetch begun before it does not store a tagged answer.
    """
    monkeypatch.setattr(tagindex, "MAX_GENERATIONS", 4)
    clock = Clock()
    store = MemoryStore(1 << 30, clock=clock)
    dropped, refreshed = key(params=("d",)), key(params=("r",))
    assert store.put_now(dropped, entry(tags=("d",)), 0)
    assert store.put_now(refreshed, entry(tags=("r",)), 0)
    token = store._epoch
    store.purge_tag("t1", "d")
    store.purge_tag("t1", "r", stale=True)
    for i in range(10):  # no reactor turn: nothing was freed or marked yet
        store.purge_tag("t1", f"other-{i}")
    assert store.lookup(dropped) is None
    found = store.lookup(refreshed)
    assert found is not None and found.stale
    assert not store.put_now(key(params=("n",)), entry(tags=("d",)), token)
    assert store.tags.generations <= 4


TENANTS = st.sampled_from(["acme", "globex", "initech"])
TAGS = st.sampled_from(["a", "b", "c", "d", "e"])


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), TENANTS, st.integers(0, 5), st.lists(TAGS, min_size=1, max_size=2, unique=True)),
            st.tuples(st.just("purge"), st.one_of(st.none(), TENANTS), TAGS, st.booleans()),
            st.tuples(st.just("turn")),
        ),
        max_size=60,
    )
)
def test_with_few_generations_kept_purges_act_exactly_as_a_model_says(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    """
    With three generations kept and two token floors, every entry is served
    unless a purge of one of its tags (by its tenant or every tenant) came
    after it was stored, and served stale exactly when only refreshes did.
    """
    clock = Clock()
    with mock.patch.object(tagindex, "MAX_GENERATIONS", 3), mock.patch.object(tagindex, "MAX_FLOORS", 2):
        store = MemoryStore(1 << 30, clock=clock)
        model: dict[CacheKey, tuple[tuple[str, ...], str]] = {}
        for step in steps:
            if step[0] == "put":
                _, tenant, i, tags = step
                k = key(tenant, params=(str(i),))
                assert store.put_now(k, entry(tags=tuple(tags)), store._epoch)
                model[k] = (tuple(tags), "fresh")
            elif step[0] == "purge":
                _, tenant, tag, stale = step
                store.purge_tag(tenant, tag, stale)
                for k, (tags, state) in model.items():
                    if tag in tags and tenant in (None, k.tenant) and state != "gone":
                        model[k] = (tags, "stale" if stale else "gone")
            else:
                clock.advance(0)
            for k, (_, state) in model.items():
                found = store.lookup(k)
                assert (found is None) == (state == "gone"), (k, state)
                assert found is None or found.stale == (state == "stale"), (k, state)
            assert store.tags.generations <= 3


@pytest_twisted.ensureDeferred
async def test_one_tenants_purges_in_redis_never_drop_another_tenants_entries(
    stores: Callable[..., RedisStore],
) -> None:
    """
    70k purges of random tags by globex through Redis: acme's tagged entries
    stay hits in Redis and in the in-process tier of every instance (which
    hears of each purge on the invalidation channel).
    """
    # a slow machine may take more than the default half second per call
    a = await ready(stores(timeout=5.0))
    b = await ready(stores(prefix=a.prefix, timeout=5.0))
    acme = acme_keys()
    for i, k in enumerate(acme):
        token = await a.begin(k)
        assert await a.put(k, entry(tags=(f"object:{i}", "objects")), token)
        assert await b.load(k) is not None
    tags = random_tags(STORM)
    for start in range(0, len(tags), 200):
        await DeferredList([a.purge_tag("globex", t) for t in tags[start : start + 200]], fireOnOneErrback=True)
    await wait_until_async(lambda: b.counters["invalidations_received"] >= STORM, 60, 0.01, "b to receive every invalidation of the storm")
    assert sum(a.lookup(k) is not None for k in acme) == len(acme)
    assert sum(b.lookup(k) is not None for k in acme) == len(acme)
    c = await ready(stores(prefix=a.prefix))
    assert all([await c.load(k) is not None for k in acme])


# -- finding: a purge of a tag no entry carries leaves bounded state ----------------

#: Seconds within which what such a purge leaves in Redis expires.
HORIZON = TAG_FETCH_HORIZON


async def used_memory(s: RedisStore) -> int:
    info = await s.commands.execute("INFO", "memory")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return int(text.split("used_memory:", 1)[1].split()[0])


async def ttls(s: RedisStore, pattern: str) -> list[int]:
    found: list[int] = []
    cursor: object = b"0"
    while True:
        cursor, keys = await s.commands.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        for k in keys:
            found.append(int(await s.commands.execute("PTTL", k)))
        if cursor in (b"0", 0, "0"):
            return found


@pytest_twisted.ensureDeferred
async def test_purges_of_tags_no_entry_carries_leave_only_what_expires_within_the_horizon(
    stores: Callable[..., RedisStore],
) -> None:
    """
    20k purges of tags that no entry carries (of a tenant, and of every
    tenant) leave in Redis at most one key each, gone within the fetch
    horizon, even while a long-lived tagged entry holds the other tags'
    generations for hours.
    """
    s = await ready(stores(timeout=5.0))
    token = await s.begin(key())
    assert await s.put(key(), entry(ttl=7200.0, tags=("kept",)), token)
    before = await used_memory(s)
    tags = random_tags(20_000, seed=2)
    for start in range(0, len(tags), 200):
        batch = tags[start : start + 200]
        await DeferredList(
            [s.purge_tag("globex" if i % 2 else None, t) for i, t in enumerate(batch)], fireOnOneErrback=True
        )
    after = await used_memory(s)
    left = await ttls(s, f"{s.prefix}:[xXyY]:*")
    print(f"used_memory: {before} -> {after} (+{(after - before) / len(tags):.0f} B per purge), {len(left)} keys")
    assert len(left) <= len(tags)
    assert all(0 < ttl <= HORIZON * 1000 for ttl in left)
    # the tagged entry is still there, and a purge of its tag still drops it
    assert await s.purge_tag("t1", "kept") == 1


@pytest_twisted.ensureDeferred
async def test_a_generation_still_needed_is_never_shortened(stores: Callable[..., RedisStore]) -> None:
    """
    A second purge of a tag, once no entry carries it any more, keeps the
    first purge's generations as long as they were (entries it moved aside
    may not be deleted yet).
    """
    s = await ready(stores())
    token = await s.begin(key())
    assert await s.put(key(), entry(ttl=7200.0, tags=("a",)), token)
    assert await s.purge_tag("t1", "a") == 1
    assert await s.purge_tag("t1", "a") == 0
    for gen in (f"{s.prefix}:x:t1:a", f"{s.prefix}:y:t1:a"):
        assert int(await s.commands.execute("PTTL", gen)) > 7200 * 1000


@pytest_twisted.ensureDeferred
async def test_a_tagged_answer_of_a_fetch_older_than_half_the_horizon_is_not_stored(
    stores: Callable[..., RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The generation a purge of an uncarried tag leaves may be gone by the
    time such a fetch ends: its tagged answer is not stored; an untagged
    one is.
    """
    monkeypatch.setattr(redis_store_module, "TAG_FETCH_HORIZON", 0.2)
    s = await ready(stores())
    tagged_token = await s.begin(key())
    plain_token = await s.begin(key(params=("43",)))
    await sleep(0.15)
    assert not await s.put(key(), entry(tags=("a",)), tagged_token)
    assert await s.put(key(params=("43",)), entry(), plain_token)
    fresh = await s.begin(key())
    assert await s.put(key(), entry(tags=("a",)), fresh)


# -- finding: stored values are untrusted, version 3 ----------------------------------


def planted(
    status: int = 200, headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes = b"poison"
) -> CachedResponse:
    now = time.time()
    return CachedResponse(status, headers, body, stored_at=now, expires_at=now + 300, stale_until=now + 600)


#: An answer to smuggle behind a value whose framing a client would misread.
INJECTED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Injected: yes\r\n\r\ninjected"

#: Values apicache never stores (SPEC.md section 3): each is a miss.
NEVER_STORED = {
    "status 100 with a body": planted(100, body=INJECTED),
    "status 101": planted(101, body=b""),
    "status 199": planted(199, body=b""),
    "status 206": planted(206, ((b"content-range", b"bytes 0-5/10"),)),
    "status 304": planted(304, body=b""),
    "status 304 with a body": planted(304, body=INJECTED),
    "status 204 with a body": planted(204, body=INJECTED),
    "status 600": planted(600),
    "content-length": planted(headers=((b"content-length", b"0"),), body=INJECTED),
    "Content-Length in capitals": planted(headers=((b"Content-Length", b"0"),)),
    "transfer-encoding": planted(headers=((b"transfer-encoding", b"chunked"),)),
    "connection": planted(headers=((b"connection", b"close"),)),
    "keep-alive": planted(headers=((b"keep-alive", b"timeout=5"),)),
    "proxy-connection": planted(headers=((b"proxy-connection", b"keep-alive"),)),
    "te": planted(headers=((b"te", b"trailers"),)),
    "trailer": planted(headers=((b"trailer", b"x-a"),)),
    "upgrade": planted(headers=((b"upgrade", b"websocket"),)),
    "set-cookie": planted(headers=((b"set-cookie", b"session=stolen"),)),
    "age": planted(headers=((b"age", b"0"),)),
    "x-cache": planted(headers=((b"x-cache", b"HIT"),)),
    "alt-svc": planted(headers=((b"alt-svc", b'h2=":443"'),)),
}

#: Final statuses SPEC v3 stores (route or upstream freshness): served.
STORED_STATUSES = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 500, 501, 503, 599]


@pytest.mark.parametrize("case", sorted(NEVER_STORED))
@pytest_twisted.ensureDeferred
async def test_a_planted_value_apicache_never_stores_is_a_miss_counted_and_logged_once(
    stores: Callable[..., RedisStore], case: str, capture_logs: list[dict[str, Any]]
) -> None:
    s = await ready(stores())
    await s.commands.execute("SET", encode_key(s.prefix, key()), encode_entry(NEVER_STORED[case]), "PX", 60000)
    assert await s.load(key()) is None
    assert s.lookup(key()) is None
    assert await s.load(key()) is None
    assert s.counters["bad_values"] == 2
    warned = [e for e in capture_logs if "bad value in Redis" in e.get("log_format", "")]
    assert len(warned) == 1
    assert b"poison" not in repr(warned).encode() and b"injected" not in repr(warned).encode()


@pytest.mark.parametrize("status", STORED_STATUSES)
@pytest_twisted.ensureDeferred
async def test_a_value_of_a_status_apicache_stores_is_a_hit(stores: Callable[..., RedisStore], status: int) -> None:
    s = await ready(stores())
    value = planted(
        status, ((b"content-type", b"text/plain"), (b"cache-status", b"up; hit")), b"" if status == 204 else b"ok"
    )
    await s.commands.execute("SET", encode_key(s.prefix, key()), encode_entry(value), "PX", 60000)
    found = await s.load(key())
    assert found is not None and found.status == status
    assert s.counters["bad_values"] == 0


@pytest.fixture
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
@pytest.mark.parametrize("case", ["status 100 with a body", "content-length", "status 204 with a body"])
def test_a_planted_value_never_makes_a_client_read_an_injected_answer(
    make_daemon: Callable[..., Daemon], redis_server: RedisServer, case: str
) -> None:
    """
    Through the real daemon and Python's http.client: a value whose status
    or framing would make the client read its body as the next answer is a
    miss, and the client reads the upstream's answer.
    """
    prefix = f"inject-{uuid.uuid4().hex[:8]}"
    cfg = {"store": {"backend": "redis", "redis_url": redis_server.url, "key_prefix": prefix}}
    a = daemon_ready(make_daemon(cfg))
    first = a.get(OBJ)
    assert first.cache == "MISS"
    keys = subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), "--scan", "--pattern", f"{prefix}:e:*"],
        capture_output=True,
        check=True,
    ).stdout.split()
    assert len(keys) == 1
    out = subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), "-x", "SET", keys[0]],
        input=encode_entry(NEVER_STORED[case]),
        capture_output=True,
        check=True,
    ).stdout
    assert out.strip() == b"OK"
    b = daemon_ready(make_daemon(cfg))
    for _ in range(2):  # a miss on the planted value, then a hit on what it fetched
        r = b.get(OBJ)
        assert r.status == 200 and r.body.startswith(b'{"path": "/api/object(42)/header"')
        assert "x-injected" not in r.headers
    assert metric(b, "apicache_store_bad_values") >= 1


# -- finding: pub/sub messages over 64 KiB or nested deeper than 8 -----------------

PUBLISH_ALL = "for i, m in ipairs(ARGV) do redis.call('PUBLISH', KEYS[1], m) end return #ARGV"


def invalidation(k: CacheKey) -> bytes:
    return json.dumps(["other", "i", k.tenant, k.route, list(k.params)]).encode()


@pytest_twisted.ensureDeferred
async def test_oversized_or_deeply_nested_messages_are_dropped_and_the_next_one_applies(
    stores: Callable[..., RedisStore],
) -> None:
    """
    Through real pub/sub, in one read: a message nested 5,000 deep (under
    64 KiB), a valid clear of t1 padded past 64 KiB, and one nested 9 deep
    are each dropped and counted; the invalidations after each still apply,
    the subscription stays up and nothing else is cleared.
    """
    a = await ready(stores())
    b = await ready(stores(prefix=a.prefix))
    first, second, third, untouched = (key(params=(str(i),)) for i in range(4))
    for k in (first, second, third, untouched):
        assert await store_entry(a, k)
        assert await b.load(k) is not None
    deep = b"[" * 5000 + b"]" * 5000
    assert len(deep) <= 65536
    padded = json.dumps(["other", "c", "t1"]).encode() + b" " * 65536
    nine = b'["other", "i", "t1", "object", [[[[[[[["0"]]]]]]]]]'
    messages = [deep, invalidation(first), padded, invalidation(second), nine, invalidation(third)]
    await a.commands.execute("EVAL", PUBLISH_ALL, 1, a.channel, *messages)
    await wait_until_async(lambda: b.lookup(third) is None, 5, 0.01, "b to apply the invalidation after the bad messages")
    assert b.lookup(first) is None and b.lookup(second) is None
    assert b.lookup(untouched) is not None
    assert b.counters["bad_messages"] == 3
    assert b.counters["local_clears"] == 0
    assert b.subscriber.protocol is not None
