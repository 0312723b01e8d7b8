"""
RedisStore against a real Redis: the store contract, the stored format,
namespacing, limits, faults, and what two instances sharing one Redis see.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from redis_support import ready, sleep
from store_contract import entry, key, make_store_tests, store_entry
from twisted.internet.defer import Deferred

from apicache.cache.keys import CacheKey
from apicache.cache.wire import header_block
from apicache.harness.launchers import RedisServer, free_port
from apicache.harness.polling import wait_until_async
from apicache.store.interface import CachedResponse, StoreUnavailable
from apicache.store.redis import (
    RedisStore,
    decode_entry,
    encode_entry,
    encode_key,
    parse_redis_url,
)
from apicache.store.redis.codec import FORMAT_VERSION

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration


async def redis_store(
    request: pytest.FixtureRequest, max_bytes: int, max_entry_bytes: int, tenant_max_bytes: int = 0
) -> RedisStore:
    """A connected store under a fresh prefix, closed at the end of the test."""
    stores = request.getfixturevalue("stores")
    return await ready(
        stores(local_max_bytes=max_bytes, max_entry_bytes=max_entry_bytes, tenant_max_bytes=tenant_max_bytes, wait=False)
    )


class TestRedisStoreContract(make_store_tests(redis_store, tenant_cap=True)):
    """The store contract, on Redis."""


def unique(name: str) -> str:
    """A key prefix of its own for each test (REDIS_URL may be shared)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def raw(s: RedisStore, *args: Any) -> Deferred[Any]:
    """Run one raw command on the store's connection."""
    return s.commands.execute(*args)


# -- format and keys -----------------------------------------------------------


def test_value_round_trips_with_a_version_byte() -> None:
    headers = ((b"etag", b'"x"'), (b"content-type", b"a/b"))
    e = CachedResponse(
        203, headers, b"\x00body\xff", 1.5, 2.5, 3.5, True,
        head=header_block(headers), swr_until=4.5, keep_until=9.5, no_cache=True, sent_at=1.25,
    )
    data = encode_entry(e)
    # version 3 carries the time the upstream request was sent
    assert data[0] == FORMAT_VERSION == 3
    # the wire form is rebuilt when loaded, not stored
    assert decode_entry(data) == e
    assert len(data) < len(e.body) + 100


def test_value_of_another_version_is_a_miss() -> None:
    data = encode_entry(entry())
    assert decode_entry(b"\x01" + data[1:]) is None
    assert decode_entry(b"\x02" + data[1:]) is None
    assert decode_entry(data[:5]) is None


# any text, and text made mostly of the separators and escape characters
_text = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.text(st.sampled_from(":,%*?[]\\ a1\x00é"), max_size=6),
)


@given(
    a=st.tuples(_text, _text, st.lists(_text, max_size=3).map(tuple), _text),
    b=st.tuples(_text, _text, st.lists(_text, max_size=3).map(tuple), _text),
)
def test_keys_from_arbitrary_strings_never_collide_across_tenants(a: Any, b: Any) -> None:
    ka, kb = CacheKey(*a), CacheKey(*b)
    ea, eb = encode_key("apicache", ka), encode_key("apicache", kb)
    assert (ea == eb) == (ka == kb)
    if ka.tenant != kb.tenant:
        # no key of one tenant falls under another tenant's namespace (clear's SCAN pattern)
        tb = encode_key("apicache", kb._replace(route="", params=(), variant="")).rsplit(":", 3)[0]
        assert not ea.startswith(tb + ":")


@given(k=st.tuples(_text, _text, st.lists(_text, max_size=3).map(tuple), _text))
def test_a_key_reads_back_unambiguously(k: Any) -> None:
    """The encoded key splits into exactly its components: no value can
    reach into another tenant's (or route's, parameter's) field."""
    key_ = CacheKey(*k)
    parts = encode_key("apicache", key_).split(":")
    assert len(parts) == 6 and parts[:2] == ["apicache", "e"]
    count, *params = parts[4].split(",")
    assert int(count) == len(key_.params)
    assert len(params) == max(1, len(key_.params))
    decoded = (unquote(parts[2]), unquote(parts[3]), tuple(unquote(p) for p in params[: len(key_.params)]), unquote(parts[5]))
    assert decoded == tuple(key_)


def test_redis_urls() -> None:
    a = parse_redis_url("rediss://user:s%3Acret@cache.example:6380/3?ssl_ca_certs=/ca.pem")
    assert (a.host, a.port, a.db, a.username, a.password, a.tls, a.ca_certs) == (
        "cache.example", 6380, 3, "user", "s:cret", True, "/ca.pem")
    b = parse_redis_url("redis://:pw@127.0.0.1")
    assert (b.port, b.db, b.password, b.username, b.tls) == (6379, 0, "pw", None, False)


def test_a_unix_socket_url() -> None:
    a = parse_redis_url("unix:///run/redis.sock?db=2")
    assert (a.unix_path, a.db, a.tls) == ("/run/redis.sock", 2, False)


def test_a_url_of_another_scheme_is_refused_without_quoting_its_password() -> None:
    with pytest.raises(ValueError) as e:
        parse_redis_url("http://user:s3cret@cache.example:6379/0")
    assert "http" in str(e.value) and "s3cret" not in str(e.value)


# -- Redis specifics -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_entry_expires_in_redis_after_stale_until(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores())
    e = entry(ttl=0.2, stale_if_error=0.1)
    assert await store_entry(s, key(), e)
    pttl = await raw(s, "PTTL", encode_key(s.prefix, key()))
    assert 0 < pttl <= 300
    await sleep(0.4)
    assert await s.load(key()) is None


@pytest_twisted.ensureDeferred
async def test_value_over_the_redis_limit_is_not_written(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores(max_value_bytes=1000))
    assert not await store_entry(s, key(), entry(b"z" * 1000))
    assert await raw(s, "EXISTS", encode_key(s.prefix, key())) == 0
    assert s.counters["too_big"] == 1
    assert await store_entry(s, key(), entry(b"z" * 500))


@pytest_twisted.ensureDeferred
async def test_clear_touches_only_keys_under_the_prefix(stores: Callable[..., RedisStore]) -> None:
    mine, theirs, unrelated = unique("mine"), unique("theirs"), unique("unrelated")
    s = await ready(stores(prefix=mine))
    other = await ready(stores(prefix=theirs))
    await raw(s, "SET", unrelated, "1")
    await store_entry(s, key())
    await store_entry(other, key())
    assert await s.clear(None) == 1
    assert await raw(s, "GET", unrelated) == b"1"
    await raw(s, "DEL", unrelated)
    assert await other.load(key()) is not None
    assert await raw(s, "EXISTS", encode_key(mine, key())) == 0
    # entries, indexes and locks are gone; only generations stay
    left = await raw(s, "KEYS", f"{mine}:*")
    assert left and {k.split(b":")[1] for k in left} <= {b"g", b"G", b"T", b"A"}


@pytest_twisted.ensureDeferred
async def test_a_tenant_named_like_a_pattern_clears_only_itself(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores())
    await store_entry(s, key(tenant="t*"))
    await store_entry(s, key(tenant="t1"))
    assert await s.clear("t*") == 1
    assert await s.load(key(tenant="t1")) is not None


# -- two instances ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_entry_stored_by_one_instance_is_loaded_by_another(stores: Callable[..., RedisStore]) -> None:
    shared = unique("shared")
    a = await ready(stores(prefix=shared))
    b = await ready(stores(prefix=shared))
    await store_entry(a, key())
    assert b.lookup(key()) is None
    assert (await b.load(key())).body == entry().body
    assert b.lookup(key()) is not None


@pytest.mark.parametrize("change", ["invalidate", "invalidate_all", "mark_stale", "clear", "discard"])
@pytest_twisted.ensureDeferred
async def test_change_reaches_the_other_instance_within_100_ms(stores: Callable[..., RedisStore], change: str) -> None:
    shared = unique("shared")
    a = await ready(stores(prefix=shared))
    b = await ready(stores(prefix=shared))
    await store_entry(a, key())
    await b.load(key())
    assert b.lookup(key()) is not None
    started = time.monotonic()
    if change == "invalidate":
        await a.invalidate("t1", "object", ("42",))
    elif change == "invalidate_all":
        await a.invalidate(None, "object", ("42",))
    elif change == "mark_stale":
        await a.mark_stale("t1", "object", ("42",))
    elif change == "clear":
        await a.clear(None)
    else:
        await a.discard(key())
    # wall clock: the change travels through a real redis-server's pub/sub,
    # whose latency only the clock measures
    if change == "mark_stale":
        await wait_until_async(lambda: b.lookup(key()).stale, 0.5, 0.001, "b to see the entry marked stale")
    else:
        await wait_until_async(lambda: b.lookup(key()) is None, 0.5, 0.001, "b to drop the entry")
    # (0.5 s: room for a loaded machine, make test runs three workers on two cores)
    assert time.monotonic() - started < 0.5


@pytest_twisted.ensureDeferred
async def test_fetch_on_one_instance_does_not_store_after_an_invalidation_on_another(
    stores: Callable[..., RedisStore],
) -> None:
    shared = unique("shared")
    a = await ready(stores(prefix=shared))
    b = await ready(stores(prefix=shared))
    token = await a.begin(key())
    await b.invalidate(None, "object", ("42",))
    assert not await a.put(key(), entry(), token)
    assert await b.load(key()) is None


@pytest_twisted.ensureDeferred
async def test_a_miss_waits_for_the_fetch_another_instance_holds(stores: Callable[..., RedisStore]) -> None:
    shared = unique("shared")
    a = await ready(stores(prefix=shared, lock_ttl=2.0))
    b = await ready(stores(prefix=shared, lock_ttl=2.0))
    assert await a.load(key()) is None  # a takes the lock
    token = await a.begin(key())
    waiting = b.load(key())
    await sleep(0.1)
    assert not waiting.called
    await a.put(key(), entry(b"from a"), token)
    got = await waiting
    assert got is not None and got.body == b"from a"


@pytest_twisted.ensureDeferred
async def test_a_waiter_fetches_itself_once_the_lock_expires(stores: Callable[..., RedisStore]) -> None:
    shared = unique("shared")
    a = await ready(stores(prefix=shared, lock_ttl=0.2))
    b = await ready(stores(prefix=shared, lock_ttl=0.2))
    assert await a.load(key()) is None
    started = time.monotonic()
    assert await b.load(key()) is None
    # wall clock: the 0.2 s lock expires inside the real redis-server
    assert 0.1 < time.monotonic() - started < 1.0


# -- faults -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_redis_down_fails_fast_and_comes_back(stores: Callable[..., RedisStore], redis_server: RedisServer) -> None:
    s = await ready(stores(url=redis_server.url, timeout=0.5))
    await store_entry(s, key())
    redis_server.stop()
    await wait_until_async(lambda: not s.is_ready(), 2, 0.01, "the store to notice Redis is down")
    # the in-process tier still answers, synchronously
    assert s.lookup(key()) is not None
    for call in (lambda: s.load(key(params=("1",))), lambda: s.begin(key()),
                 lambda: s.invalidate(None, "object", ("42",)), lambda: s.clear(None)):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        # wall clock: failing at once, not after the 0.5 s timeout, is what
        # a real redis-server's absence must cost (0.2 s: room for a loaded
        # machine's scheduling, make test runs three workers on two cores)
        assert time.monotonic() - started < 0.2
    redis_server.start()
    restarted = time.monotonic()
    await wait_until_async(s.is_ready, 5, 0.01, "the store to reconnect")
    # wall clock: a real redis-server restarted; reconnection backoff is capped at 2 s
    assert time.monotonic() - restarted < 3.5
    assert await store_entry(s, key(params=("2",)))
    assert (await s.load(key(params=("2",)))) is not None


@pytest_twisted.ensureDeferred
async def test_slow_redis_times_out_and_never_stalls_local_hits(
    stores: Callable[..., RedisStore], redis_server: RedisServer
) -> None:
    s = await ready(stores(url=redis_server.url, timeout=0.3))
    await store_entry(s, key())
    redis_server.pause()
    try:
        assert s.lookup(key()) is not None
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.load(key(params=("9",)))
        # wall clock: the 0.3 s timeout runs out against a real, paused redis-server
        assert 0.25 < time.monotonic() - started < 1.0
        await wait_until_async(lambda: not s.is_ready(), 2, 0.01, "the store to notice Redis is paused")
        # until Redis answers a PING again, calls don't wait out the timeout
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.begin(key(params=("9",)))
        # wall clock: not waiting for the paused redis-server is only seen on
        # it (half the 0.3 s timeout: room for a loaded machine's scheduling)
        assert time.monotonic() - started < 0.15
        started = time.monotonic()
        for _ in range(1000):
            assert s.lookup(key()) is not None
        # wall clock: 1000 hits in less than one 0.3 s timeout: none
        # waited on the paused redis-server
        assert time.monotonic() - started < 0.2
    finally:
        redis_server.resume()
    await wait_until_async(s.is_ready, 3, 0.01, "the store to reconnect")
    assert await s.load(key()) is not None


@pytest_twisted.ensureDeferred
async def test_password_protected_redis(stores: Callable[..., RedisStore], tmp_path: Any) -> None:
    server = RedisServer(str(tmp_path), extra_args=["--requirepass", "s3cret"]).start()
    try:
        good = await ready(stores(url=f"redis://:s3cret@127.0.0.1:{server.port}/1"))
        assert await store_entry(good, key())
        assert server.command("EXISTS", encode_key(good.prefix, key()), password="s3cret") == b":0"  # db 0
        bad = stores(url=f"redis://:wrong@127.0.0.1:{server.port}/0", wait=False)
        await sleep(0.5)
        assert not bad.is_ready()
        with pytest.raises(StoreUnavailable):
            await bad.load(key())
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_release_lets_the_waiter_fetch_at_once(stores: Callable[..., RedisStore]) -> None:
    shared = unique("shared")
    a = await ready(stores(prefix=shared, lock_ttl=5.0))
    b = await ready(stores(prefix=shared, lock_ttl=5.0))
    assert await a.load(key()) is None
    token = await a.begin(key())
    waiting = b.load(key())
    await sleep(0.05)
    assert not waiting.called
    started = time.monotonic()
    a.release(key(), token)
    assert await waiting is None
    # wall clock: the release reaches the waiter through a real redis-server,
    # long before the 5 s lock would expire
    assert time.monotonic() - started < 0.5


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest_twisted.ensureDeferred
async def test_rediss_with_a_private_ca_and_a_password(stores: Callable[..., RedisStore], tmp_path: Any) -> None:
    cert, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key_file), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    tls_port = free_port()
    server = RedisServer(str(tmp_path), extra_args=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key_file),
        "--tls-auth-clients", "no", "--requirepass", "pw"]).start()
    try:
        good = await ready(stores(url=f"rediss://:pw@localhost:{tls_port}/0?ssl_ca_certs={cert}"))
        assert await store_entry(good, key())
        assert (await good.load(key())) is not None
        # the same server, but its certificate is not trusted
        untrusted = stores(url=f"rediss://:pw@localhost:{tls_port}/0", wait=False)
        await sleep(0.5)
        assert not untrusted.is_ready()
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_a_connection_frozen_for_several_pings_is_remade(
    stores: Callable[..., RedisStore], redis_server: RedisServer
) -> None:
    s = await ready(stores(url=redis_server.url, timeout=0.2))
    first = s.commands.protocol
    redis_server.pause()
    try:
        await wait_until_async(lambda: s.commands.protocol is not first, 6, 0.01, "the frozen connection to be remade")
    finally:
        redis_server.resume()
    await wait_until_async(s.is_ready, 5, 0.01, "the store to reconnect")
    assert await store_entry(s, key())
