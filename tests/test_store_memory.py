"""
The in-process store: the store contract, and the byte budget.
"""

from store_contract import entry, key, make_store_tests

from apicache.store.interface import ENTRY_OVERHEAD
from apicache.store.memory import MemoryStore


class TestMemoryStoreContract(
    make_store_tests(
        lambda request, max_bytes, max_entry_bytes, tenant_max_bytes=0: MemoryStore(
            max_bytes, max_entry_bytes, tenant_max_bytes=tenant_max_bytes
        ),
        tenant_cap=True,
    )
):
    """The store contract, in memory."""


def charge(k, e):
    return e.size() + k.size() + ENTRY_OVERHEAD


def test_budget_counts_body_headers_key_and_overhead():
    s = MemoryStore(1 << 20)
    k, e = key(), entry(b"x" * 100)
    s.put_now(k, e, 0)
    headers = len(b"content-type") + len(b"application/json") + len(b"etag") + len(b'"v1"')
    assert s.stats()["bytes"] == 100 + headers + k.size() + ENTRY_OVERHEAD


def test_least_recently_used_is_evicted_first():
    one = charge(key(params=("1",)), entry(b"x" * 100))
    s = MemoryStore(one * 3)
    for i in "123":
        assert s.put_now(key(params=(i,)), entry(b"x" * 100), 0)
    s.lookup(key(params=("1",)))  # now "2" is the least recently used
    s.put_now(key(params=("4",)), entry(b"x" * 100), 0)
    assert s.lookup(key(params=("2",))) is None
    assert s.lookup(key(params=("1",))) is not None
    assert s.stats()["evictions"] == 1
    assert s.stats()["bytes"] <= one * 3


def test_entry_over_the_entry_limit_is_not_stored_and_drops_the_old_one():
    s = MemoryStore(1 << 20, max_entry_bytes=1000)
    assert s.put_now(key(), entry(b"small"), 0)
    assert s.put_now(key(), entry(b"x" * 1000), 0) is False
    assert s.lookup(key()) is None
    assert s.stats() == {"entries": 0, "bytes": 0, "evictions": 0}


def test_the_entry_limit_applies_to_the_answer_not_its_bookkeeping():
    # SPEC.md section 2: max_entry_fraction limits the answer's size; with a
    # small budget its share is below ENTRY_OVERHEAD, yet small answers are kept
    s = MemoryStore(4000, max_entry_bytes=400)
    e = entry(b"x" * 300)
    assert e.size() <= 400 < charge(key(), e)
    assert s.put_now(key(), e, 0)
    assert s.lookup(key()) is e
    assert s.put_now(key(params=("2",)), entry(b"x" * 400), 0) is False


def test_an_entry_whose_charge_exceeds_the_budget_is_not_stored():
    e = entry(b"x" * 100)
    s = MemoryStore(charge(key(), e) - 1, max_entry_bytes=1 << 20)
    assert s.put_now(key(), e, 0) is False
    assert s.stats() == {"entries": 0, "bytes": 0, "evictions": 0}


def test_removing_everything_returns_the_budget_to_zero():
    s = MemoryStore(1 << 20)
    s.put_now(key(tenant="a"), entry(), 0)
    s.put_now(key(tenant="b", variant="w"), entry(), 0)
    s.invalidate("a", "object", ("42",))
    s.clear("b")
    assert s.stats()["bytes"] == 0


def test_forgotten_changes_make_old_tokens_conservative(monkeypatch):
    import apicache.store.memory as memory

    monkeypatch.setattr(memory, "_CHANGES_KEPT", 2)
    s = MemoryStore(1 << 20)
    token = s._epoch
    for i in range(4):
        s.invalidate("t9", "object", (str(i),))
    assert s.put_now(key(), entry(), token) is False
    assert s.put_now(key(), entry(), s._epoch) is True


def test_a_key_stored_again_soon_after_its_eviction_goes_to_the_main_queue():
    """S3-FIFO's ghost: the second coming of a key is not a one-hit wonder."""
    one = charge(key(params=("1",)), entry(b"x" * 100))
    s = MemoryStore(one * 4)
    for i in "1234":
        s.put_now(key(params=(i,)), entry(b"x" * 100), 0)
    s.put_now(key(params=("5",)), entry(b"x" * 100), 0)
    assert s.lookup(key(params=("1",))) is None
    assert s._slots[key(params=("5",))].main is False
    s.put_now(key(params=("1",)), entry(b"x" * 100), 0)
    assert s._slots[key(params=("1",))].main is True


def test_a_hit_only_counts_and_moves_nothing():
    s = MemoryStore(1 << 20)
    for i in "123":
        s.put_now(key(params=(i,)), entry(), 0)
    order = [slot.key for slot in s._tenants["t1"][0].small]
    s.lookup(key(params=("1",)))
    assert [slot.key for slot in s._tenants["t1"][0].small] == order
    assert s._slots[key(params=("1",))].freq == 1
