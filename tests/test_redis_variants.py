"""
Variants through a real Redis (SPEC.md section 3, v3; RFC 9111 section
4.1), against a private redis-server: two instances sharing one Redis
serve each other's variants, a purge on one drops every variant on both,
and the layout (a list of variants per key, each variant an entry of its
own) is what the scripts keep.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest_twisted
from redis_support import ready
from store_contract import LANG, entry, key, store_entry
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers

from apicache.cache.keys import CacheKey, variant_key
from apicache.cache.registry import CacheRegistry
from apicache.cache.tenant import HIT, MISS, CacheResult, FetchRequest
from apicache.config import RouteConfig, UpstreamConfig
from apicache.harness.polling import wait_until_async
from apicache.store.redis import RedisStore
from apicache.store.redis.codec import encode_key, variants_key
from apicache.testing import FakeUpstream
from apicache.upstream.client import UpstreamResponse

ROUTE = RouteConfig("object", "/o/<id>", "/o/{id}", ttl=60.0, params=("id",), fingerprint="f")
UPSTREAM = UpstreamConfig(unkeyed_headers=("authorization", "x-correlationid", "accept-language"))
KEY = CacheKey("t1", "object", ("1",), "f\x00")


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def by_language(path: str, headers: Sequence[tuple[bytes, bytes]]) -> UpstreamResponse:
    """The upstream: its answer depends on accept-language, and says so."""
    lang = dict(headers).get(b"accept-language", b"none")
    return UpstreamResponse(200, [(b"content-type", b"text/plain"), (b"vary", b"Accept-Language")], b"body:" + lang)


class Instance:
    """One apicache instance's cache core over a shared Redis."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.upstream = FakeUpstream(auto=by_language)
        self.registry = CacheRegistry(store, self.upstream, reactor, [ROUTE], (), upstream_config=UPSTREAM)  # type: ignore[arg-type]

    async def get(self, lang: str) -> CacheResult:
        req = FetchRequest("/o/1", [(b"accept-language", lang.encode())], b"identity", Headers({b"accept-language": [lang.encode()]}))
        r = self.registry.cache("t1", "object").get(KEY, req)
        return await r if isinstance(r, Deferred) else r


def raw(s: RedisStore, *args: Any) -> Deferred[Any]:
    return s.commands.execute(*args)


@pytest_twisted.ensureDeferred
async def test_a_vary_round_trip_through_redis(stores: Callable[..., RedisStore]) -> None:
    """
    RFC 9111 section 4.1 across instances: what one stores as variants of a
    key, another serves by the caller's values; a new value is a vary-miss
    on either; a purge on one drops every variant on both.
    """
    prefix = unique("vary")
    a = Instance(await ready(stores(prefix=prefix)))
    b = Instance(await ready(stores(prefix=prefix)))
    assert (await a.get("en")).member == b"apicache;fwd=uri-miss;fwd-status=200;stored"
    de = await a.get("de")
    assert (de.cache, de.member) == (MISS, b"apicache;fwd=vary-miss;fwd-status=200;stored")
    for lang in ("en", "DE", " en"):
        r = await b.get(lang)
        assert (r.cache, r.response.body) == (HIT, b"body:" + lang.strip().lower().encode())
    assert b.upstream.fetched == []
    # now held in b's tier too: a hit without Redis
    r = b.registry.cache("t1", "object").hit(KEY, Headers({b"accept-language": [b"de"]}))
    assert r is not None and r.response.body == b"body:de"
    fr = await b.get("fr")
    assert (fr.cache, fr.member, fr.response.body) == (MISS, b"apicache;fwd=vary-miss;fwd-status=200;stored", b"body:fr")
    assert len(b.upstream.fetched) == 1
    assert (await a.get("fr")).cache == HIT
    assert len(a.upstream.fetched) == 2
    # a purge on b drops every variant, in Redis and in a's tier
    assert await b.registry.invalidate("t1", "object", ("1",)) == 3
    await wait_until_async(lambda: a.store.variants(KEY) == (), 5.0, 0.01, "a to drop the purged variants")
    assert await raw(a.store, "EXISTS", variants_key(prefix, KEY)) == 0
    assert (await a.get("en")).member == b"apicache;fwd=uri-miss;fwd-status=200;stored"
    assert len(a.upstream.fetched) == 3


@pytest_twisted.ensureDeferred
async def test_the_redis_layout_of_variants(stores: Callable[..., RedisStore]) -> None:
    """
    A key that varies holds a list of its variants (its P:v: key), in the
    resource set with them and living as long as the longest-lived; each
    variant is an entry under the key's entry key and its selector.
    """
    s = await ready(stores(prefix=unique("layout")))
    assert await store_entry(s, key(), entry(b"en", ttl=30, variant=LANG[0]))
    assert await store_entry(s, key(), entry(b"de", ttl=90, variant=LANG[1]))
    p = s.prefix
    listed = await raw(s, "GET", variants_key(p, key()))
    lines = listed.split(b"\n")
    assert lines[0][:1] == b"V" and [line[:32] for line in lines[1:]] == [LANG[1].selector.hex().encode(), LANG[0].selector.hex().encode()]
    assert 85_000 < await raw(s, "PTTL", variants_key(p, key())) <= 90_000
    members = set(await raw(s, "SMEMBERS", f"{p}:r:t1:object:1,42"))
    entries = {encode_key(p, variant_key(key(), v.selector)).encode() for v in LANG[:2]}
    assert members == entries | {variants_key(p, key()).encode()}
    for k in entries:
        assert await raw(s, "EXISTS", k.decode()) == 1
    # an entry that serves every request takes the key back
    assert await store_entry(s, key(), entry(b"all"))
    assert await raw(s, "EXISTS", variants_key(p, key()), *[k.decode() for k in entries]) == 0
    assert await raw(s, "EXISTS", encode_key(p, key())) == 1


@pytest_twisted.ensureDeferred
async def test_a_variant_loaded_moves_first_in_redis(stores: Callable[..., RedisStore]) -> None:
    """SPEC.md section 2, max_variants: in Redis, the least recently loaded or stored goes."""
    prefix = unique("lru")
    s = await ready(stores(prefix=prefix))
    for i in range(2):
        token = await s.begin(key())
        assert await s.put(key(), entry(variant=LANG[i]), token, 2)
    assert await s.load(key()) == (LANG[1], LANG[0])
    assert (await s.load(variant_key(key(), LANG[0].selector))).variant == LANG[0]
    assert await s.load(key()) == (LANG[0], LANG[1])
    token = await s.begin(key())
    assert await s.put(key(), entry(variant=LANG[2]), token, 2)
    assert await s.load(key()) == (LANG[2], LANG[0])
    assert await s.load(variant_key(key(), LANG[1].selector)) is None


@pytest_twisted.ensureDeferred
async def test_what_redis_holds_for_variants_is_checked(stores: Callable[..., RedisStore]) -> None:
    """
    SPEC.md section 3, stored values are untrusted: a damaged list, or a
    variant stored under another key's name, is a miss, counted.
    """
    s = await ready(stores(prefix=unique("bad")))
    await raw(s, "SET", variants_key(s.prefix, key()), b"V-\nnot a list")
    assert await s.load(key()) is None
    assert s.counters["bad_values"] == 1
    await store_entry(s, key(), entry(variant=LANG[0]))
    value = await raw(s, "GET", encode_key(s.prefix, variant_key(key(), LANG[0].selector)))
    await raw(s, "SET", encode_key(s.prefix, variant_key(key(), LANG[1].selector)), value)
    await raw(s, "SET", encode_key(s.prefix, key(params=("9",))), value)
    assert await s.load(variant_key(key(), LANG[1].selector)) is None
    assert await s.load(key(params=("9",))) is None
    assert s.counters["bad_values"] == 3


@pytest_twisted.ensureDeferred
async def test_only_if_cached_selects_a_variant_in_redis(stores: Callable[..., RedisStore]) -> None:
    """RFC 9111 sections 4.1 and 5.2.1.7, across instances: no upstream call."""
    prefix = unique("oic")
    a = Instance(await ready(stores(prefix=prefix)))
    b = Instance(await ready(stores(prefix=prefix)))
    await a.get("en")
    await a.get("de")
    cache = b.registry.cache("t1", "object")
    found = await cache.cached(KEY, Headers({b"accept-language": [b"de"]}))
    assert (found.cache, found.response.body) == (HIT, b"body:de")
    assert await cache.cached(KEY, Headers({b"accept-language": [b"fr"]})) is None
    assert b.upstream.fetched == []
