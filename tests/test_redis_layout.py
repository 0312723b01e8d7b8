"""
The cluster key layout (apicache.store.redis.layout) and the seed URLs of
cluster and sentinel mode, without a Redis: every name one script touches
hashes to one slot, buckets cover the slots evenly, a tenant stays in its
stripe.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot as redis_key_slot

from apicache.cache.keys import CacheKey
from apicache.store.redis.address import parse_redis_seeds
from apicache.store.redis.codec import encode_key, generation_keys, lock_key, resource_name, route_name, tag_record_key
from apicache.store.redis.layout import BUCKET_TAGS, BUCKETS, SLOTS, STRIPE, BucketLayout, key_slot, tenant_buckets

text = st.text(max_size=12)


def test_each_bucket_hashes_into_its_own_range_of_slots() -> None:
    width = SLOTS // BUCKETS
    assert len(BUCKET_TAGS) == BUCKETS == len(set(BUCKET_TAGS))
    for b, tag in enumerate(BUCKET_TAGS):
        assert tag.isalnum()
        assert key_slot(tag) // width == b
        assert redis_key_slot(tag.encode()) == key_slot(tag)


@given(text, text, st.lists(text, max_size=3), text)
def test_every_name_of_a_key_hashes_to_one_slot(tenant: str, route: str, params: list[str], variant: str) -> None:
    layout = BucketLayout("apicache")
    k = CacheKey(tenant, route, tuple(params), variant)
    p = layout.at(k)
    names = [encode_key(p, k), lock_key(p, k), tag_record_key(p, k), *generation_keys(p, k), f"{p}:seq", f"{p}:L",
             f"{p}:r:{resource_name(tenant, route, tuple(params))}", f"{p}:t:{route_name(route, tuple(params))}",
             f"{p}:x:{tenant}:tag", f"{p}:Z:tag", f"{p}:wait"]
    assert {redis_key_slot(n.encode()) for n in names} == {key_slot(p)}
    assert p in layout.of_tenant(tenant)


def test_a_tenant_is_striped_over_its_buckets() -> None:
    layout = BucketLayout("p")
    used = {layout.resource("t1", "object", (str(i),)) for i in range(200)}
    assert used == set(layout.of_tenant("t1"))
    assert len(tenant_buckets("t1")) == STRIPE == len(set(tenant_buckets("t1")))


def test_scan_patterns_and_groups() -> None:
    layout = BucketLayout("p")
    a, b = layout.buckets[0], layout.buckets[1]
    keys = [f"{a}:e:t:r:1,x:v".encode(), f"{a}:n:t:r:1,x:v".encode(), f"{b}:e:t:r:1,y:v".encode()]
    assert [layout.is_entry(k) for k in keys] == [True, False, True]
    assert sorted(len(g) for g in layout.by_bucket(keys)) == [1, 2]
    assert layout.clear_pattern("t 1") == "p:{*}:[erlnzv]:t%201:*"


def test_a_brace_in_the_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="brace|{"):
        BucketLayout("a{b}")


def test_seed_urls() -> None:
    s = parse_redis_seeds("rediss://user:p%40ss@h1:7000,h2,[::1]:7002/0?ssl_cert_reqs=none&sentinel_password=sp")
    assert s.hosts == [("h1", 7000), ("h2", 6379), ("::1", 7002)]
    assert (s.username, s.password, s.tls, s.verify, s.sentinel_password) == ("user", "p@ss", True, False, "sp")
    assert "p@ss" not in repr(s)
    assert parse_redis_seeds("redis://s1,s2:26380/2", 26379).hosts == [("s1", 26379), ("s2", 26380)]
    assert parse_redis_seeds("redis://:pw@h").password == "pw"
    with pytest.raises(ValueError):
        parse_redis_seeds("unix:///tmp/r.sock")
    with pytest.raises(ValueError):
        parse_redis_seeds("redis://h:99999")
