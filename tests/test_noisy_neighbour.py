"""
Fair share and ``store.tenant_max_bytes`` (SPEC.md sections 2 and 3) through
the real daemon: a tenant within its fair share keeps every entry while
another floods unique keys, and a capped tenant loses its own entries, never
the other tenant's.  Checked as callers and operators see it: ``X-Cache``,
the upstream's call counts and ``/metrics``.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

OBJ = "/server/object({})/header"
UP_OBJ = "/api/object({})/header"
KIB = 1024


def metric(d, family: str, label: str) -> float:
    """
    Return the sample of ``family`` whose one label has the value ``label``
    (0 when there is none).
    """
    text = d.request("GET", "/metrics").body.decode()
    m = re.search(rf'^{family}\{{\w+="{re.escape(label)}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def flood(d, prefix: str, n: int) -> list[str]:
    """
    GET ``n`` new keys as tenant ``noisy``, 8 at a time; return their
    ``X-Cache`` values.
    """
    def one(i: int) -> str:
        r = d.get(OBJ.format(f"{prefix}{i}"), tenant="noisy")
        assert r.status == 200, r.body
        return r.cache or "-"

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def read_victim(d, keys: int) -> list[str]:
    out = []
    for i in range(keys):
        r = d.get(OBJ.format(f"v{i}"), tenant="victim")
        assert r.status == 200, r.body
        out.append(r.cache or "-")
    return out


def test_a_tenant_within_its_fair_share_keeps_every_entry_through_a_flood(make_daemon, upstream):
    max_bytes = 64 * KIB
    d = make_daemon({"store": {"max_bytes": max_bytes}, "server": {"access_log": False}})
    # the flood fills the whole budget first: noisy holds everything
    assert set(flood(d, "a", 150)) == {"MISS"}
    noisy_alone = metric(d, "apicache_store_tenant_bytes", "noisy")
    assert noisy_alone > max_bytes * 0.9
    assert read_victim(d, 10) == ["MISS"] * 10
    # the victim's inserts took room from noisy, above its fair share
    fair_share = metric(d, "apicache_store_evictions_by_reason_total", "fair_share")
    assert fair_share > 0
    victim_bytes = metric(d, "apicache_store_tenant_bytes", "victim")
    assert 0 < victim_bytes < max_bytes / 2  # within its fair share, as the test needs

    # a flood of several times the budget: between two reads of a victim
    # key, more new keys than the whole budget holds (LRU loses them all)
    for chunk in range(3):
        assert set(flood(d, f"b{chunk}-", 100)) == {"MISS"}
        assert read_victim(d, 10) == ["HIT"] * 10, chunk
    assert all(upstream.calls(UP_OBJ.format(f"v{i}")) == 1 for i in range(10))
    # noisy paid for its own flood (S3-FIFO's choice within noisy) and never
    # took anything more from the victim
    assert metric(d, "apicache_store_evictions_by_reason_total", "policy") > 200
    assert metric(d, "apicache_store_evictions_by_reason_total", "fair_share") == fair_share
    assert metric(d, "apicache_store_tenant_bytes", "victim") == victim_bytes
    assert metric(d, "apicache_store_tenant_entries", "victim") == 10
    # the first keys of the flood are gone: the budget really was exceeded
    assert flood(d, "a", 5) == ["MISS"] * 5


def test_tenant_max_bytes_caps_a_tenant_and_only_that_tenant(make_daemon, upstream):
    cap = 16 * KIB
    d = make_daemon({"store": {"max_bytes": 1024 * KIB, "tenant_max_bytes": cap}, "server": {"access_log": False}})
    assert read_victim(d, 10) == ["MISS"] * 10
    victim_bytes = metric(d, "apicache_store_tenant_bytes", "victim")
    assert 0 < victim_bytes <= cap

    assert set(flood(d, "c", 60)) == {"MISS"}
    noisy_bytes = metric(d, "apicache_store_tenant_bytes", "noisy")
    # 60 answers are several times the cap: noisy holds what fits under it
    assert cap * 0.8 < noisy_bytes <= cap
    assert metric(d, "apicache_store_tenant_entries", "noisy") < 30
    assert metric(d, "apicache_store_evictions_by_reason_total", "tenant_cap") >= 30
    # the budget was never short: nothing was taken for fair share
    assert metric(d, "apicache_store_evictions_by_reason_total", "fair_share") == 0
    # noisy's first keys were evicted, its entries re-fetched; the victim's stayed
    calls_before = upstream.calls(UP_OBJ.format("c0"))
    assert d.get(OBJ.format("c0"), tenant="noisy").cache == "MISS"
    assert upstream.calls(UP_OBJ.format("c0")) == calls_before + 1
    assert read_victim(d, 10) == ["HIT"] * 10
    assert metric(d, "apicache_store_tenant_bytes", "victim") == victim_bytes
