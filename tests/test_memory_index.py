"""
The memory store's compact index (issue 5) answers invalidations exactly as
a plain model does: every variant, for one tenant or all, clear and forget.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from apicache.cache.keys import CacheKey
from apicache.store.interface import CachedResponse
from apicache.store.memory import MemoryStore

tenants = st.sampled_from(["t1", "t2", "t3"])
routes = st.sampled_from(["object", "template"])
params = st.sampled_from([("1",), ("2",), ("3",)])
variants = st.sampled_from(["v", "v\x00a=1", "v\x00b=2"])
keys = st.builds(CacheKey, tenants, routes, params, variants)

ops = st.one_of(
    st.tuples(st.just("put"), keys),
    st.tuples(st.just("invalidate"), st.one_of(st.none(), tenants), routes, params),
    st.tuples(st.just("clear"), st.one_of(st.none(), tenants)),
    st.tuples(st.just("forget"), tenants, routes),
    st.tuples(st.just("discard"), keys),
)


def entry() -> CachedResponse:
    return CachedResponse(200, ((b"content-type", b"application/json"),), b"x" * 10, 0.0, 10.0, 10.0)


@given(st.lists(ops, max_size=60))
def test_index_agrees_with_a_model(steps):
    store = MemoryStore(1 << 30)
    model: set[CacheKey] = set()
    for op in steps:
        if op[0] == "put":
            assert store.put_now(op[1], entry(), store._epoch)
            model.add(op[1])
            continue
        if op[0] == "invalidate":
            _, tenant, route, p = op
            gone = {k for k in model if (tenant is None or k.tenant == tenant) and k.route == route and k.params == p}
            n = store.invalidate(tenant, route, p).result
        elif op[0] == "clear":
            gone = {k for k in model if op[1] is None or k.tenant == op[1]}
            n = store.clear(op[1]).result
        elif op[0] == "forget":
            gone = {k for k in model if k.tenant == op[1] and k.route == op[2]}
            store.forget(op[1], op[2])
            n = len(gone)
        else:
            gone = {op[1]} & model
            n = store.discard(op[1]).result
        assert n == len(gone)
        model -= gone
        assert {k for k in model if store.lookup(k) is not None} == model
        assert store.stats()["entries"] == len(model)
        per_tenant: dict[str, int] = {}
        for k in model:
            per_tenant[k.tenant] = per_tenant.get(k.tenant, 0) + 1
        assert store.tenant_entries() == per_tenant
    store.clear(None)
    assert store.stats() == {"entries": 0, "bytes": 0, "evictions": 0}


def test_eviction_keeps_the_index_consistent():
    """Evicted entries leave the index: invalidating them later finds none."""
    size = MemoryStore._charge(CacheKey("t", "r", ("1",), "v"), entry())
    store = MemoryStore(size * 2)
    for i in range(5):
        assert store.put_now(CacheKey("t", "r", (str(i),), "v"), entry(), 0)
    assert store.stats()["entries"] == 2
    assert store.invalidate("t", "r", ("0",)).result == 0
    assert store.invalidate(None, "r", ("4",)).result == 1
    assert store.clear("t").result == 1
