"""
Tags (surrogate keys, SPEC.md section 3): where an entry's tags come from,
the limits, purges that take effect at once, the race rule for tags, the
memory store's tag index and its batched freeing, event decoding and the
``DELETE /tags/<tag>`` route, in-process with a fake upstream and a Clock.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from apicache.cache.keys import CacheKey
from apicache.cache.registry import CacheRegistry
from apicache.cache.tags import InvalidTag, TooManyTags, answer_tags, decode_tag_path, route_tags
from apicache.cache.tenant import HIT, MISS, STALE, CacheResult, FetchRequest
from apicache.config import EventRule, RouteConfig
from apicache.events.decoding import BadEvent, CacheAction, EventDecoder
from apicache.http.api import CacheAPI
from apicache.store.interface import CachedResponse
from apicache.store.memory import MemoryStore
from apicache.store.tagindex import REAP_BATCH, TagIndex
from apicache.testing import FakeUpstream, InMemoryAPI

OBJ = RouteConfig(
    "object", "/o/<id>", "/o/{id}", ttl=10.0, params=("id",), fingerprint="f", tags=("object:{id}", "objects")
)
LIST = RouteConfig("list", "/l/<page>", "/l/{page}", ttl=10.0, params=("page",), fingerprint="g")
KEYED = ("accept",)
SK = b"surrogate-key"


def key(tenant: str = "t1", route: str = "object", id: str = "1", variant: str = "v") -> CacheKey:
    return CacheKey(tenant, route, (id,), variant)


def req() -> FetchRequest:
    return FetchRequest("/x", [])


# -- sources and limits ------------------------------------------------------


def test_route_templates_are_filled_from_path_parameters() -> None:
    assert route_tags(OBJ, ("42",)) == ("object:42", "objects")
    assert route_tags(LIST, ("1",)) == ()


def test_tags_header_values_split_on_spaces_and_commas_after_the_route_tags() -> None:
    headers = [(SK, b"a  b,c , objects"), (b"content-type", b"x"), (SK, b"d\te")]
    assert answer_tags(OBJ, ("7",), headers, SK) == ("object:7", "objects", "a", "b", "c", "d", "e")
    # without a tags_header the header is just a header
    assert answer_tags(OBJ, ("7",), headers, b"") == ("object:7", "objects")


def test_sixty_four_tags_are_stored_sixty_five_are_not() -> None:
    ok = [(SK, b" ".join(b"t%d" % i for i in range(62)))]
    assert len(answer_tags(OBJ, ("1",), ok, SK)) == 64
    too_many = [(SK, b" ".join(b"t%d" % i for i in range(63)))]
    with pytest.raises(TooManyTags):
        answer_tags(OBJ, ("1",), too_many, SK)


def test_a_tag_over_256_bytes_is_refused_256_is_not() -> None:
    assert answer_tags(LIST, ("1",), [(SK, b"x" * 256)], SK) == ("x" * 256,)
    with pytest.raises(TooManyTags):
        answer_tags(LIST, ("1",), [(SK, b"x" * 257)], SK)
    with pytest.raises(TooManyTags):
        answer_tags(LIST, ("1",), [(SK, b"\xff\xfe")], SK)


def test_tag_path_is_percent_decoded_once() -> None:
    assert decode_tag_path(b"object%3A42") == "object:42"
    assert decode_tag_path(b"a%2541") == "a%41"
    assert decode_tag_path(b"caf%C3%A9") == "café"
    for bad in (b"", b"a%20b", b"a%2Cb", b"%ff", b"x" * 257):
        with pytest.raises(InvalidTag):
            decode_tag_path(bad)


# -- the cache core ------------------------------------------------------------


class Harness:
    def __init__(self, max_bytes: int = 1 << 24, clock_reaps: bool = True) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryStore(max_bytes, clock=self.clock if clock_reaps else None)
        self.upstream = FakeUpstream()
        self.registry = CacheRegistry(
            self.store, self.upstream, self.clock, [OBJ, LIST], KEYED, tags_header="Surrogate-Key"
        )

    def get(self, tenant: str = "t1", k: CacheKey | None = None, route: str = "object") -> object:
        k = k or key(tenant, route)
        return self.registry.cache(tenant, route).get(k, req())

    def purged(self, d: Deferred[int]) -> Deferred[int]:
        """Let the purge's walk run (one batch per reactor turn) and return it."""
        while self.clock.calls and not d.called:
            self.clock.advance(0)
        return d

    def answer(self, *tags: bytes, body: bytes = b"{}", i: int = 0) -> None:
        headers = [(b"content-type", b"application/json")]
        if tags:
            headers.append((SK, b" ".join(tags)))
        self.upstream.pending[i].respond(body=body, headers=headers)


class TagCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def fill(self, tenant: str = "t1", k: CacheKey | None = None, route: str = "object", *tags: bytes) -> CacheResult:
        d = self.h.get(tenant, k, route)
        assert isinstance(d, Deferred)
        self.h.answer(*tags)
        result: CacheResult = self.successResultOf(d)
        return result

    def test_entry_carries_route_and_header_tags_and_the_header_is_never_replayed(self) -> None:
        result = self.fill("t1", None, "object", b"list:1")
        assert result.cache == MISS
        assert all(name != SK for name, _ in result.response.headers)
        hit = self.h.get()
        assert isinstance(hit, CacheResult) and hit.cache == HIT
        assert hit.response.tags == ("object:1", "objects", "list:1")
        assert all(name != SK for name, _ in hit.response.headers)

    def test_a_purge_takes_effect_at_once_before_memory_is_freed(self) -> None:
        for i in range(3):
            self.fill("t1", key(id=str(i)), "object", b"list:1")
        n = self.successResultOf(self.h.purged(self.h.registry.invalidate_tags("t1", ["list:1"], "http")))
        assert n == 3
        for i in range(3):
            assert isinstance(self.h.get("t1", key(id=str(i))), Deferred)
        assert self.h.registry.tag_purges["http"] == 1

    def test_purge_of_a_route_tag_drops_every_variant(self) -> None:
        self.fill("t1", key(variant="a"))
        self.fill("t1", key(variant="b"))
        self.fill("t1", key(id="2"))
        assert self.successResultOf(self.h.purged(self.h.registry.invalidate_tags("t1", ["object:1"]))) == 2
        assert isinstance(self.h.get("t1", key(variant="a")), Deferred)
        assert isinstance(self.h.get("t1", key(id="2")), CacheResult)

    def test_a_tag_of_one_tenant_is_not_the_same_tag_of_another(self) -> None:
        self.fill("acme", key("acme"))
        self.fill("globex", key("globex"))
        assert self.successResultOf(self.h.purged(self.h.registry.invalidate_tags("acme", ["object:1"]))) == 1
        assert isinstance(self.h.get("globex", key("globex")), CacheResult)
        assert isinstance(self.h.get("acme", key("acme")), Deferred)

    def test_without_a_tenant_the_tag_is_purged_for_every_tenant(self) -> None:
        self.fill("acme", key("acme"))
        self.fill("globex", key("globex"))
        assert self.successResultOf(self.h.purged(self.h.registry.invalidate_tags(None, ["objects"]))) == 2
        assert isinstance(self.h.get("acme", key("acme")), Deferred)
        assert isinstance(self.h.get("globex", key("globex")), Deferred)

    def test_race_rule_a_purge_during_the_fetch_wins_for_a_header_tag(self) -> None:
        """
        The answer turns out to carry the purged tag: the waiters get it,
        it is not stored, and a caller after the purge fetches again.
        """
        first = self.h.get("t1", key(route="list"), "list")
        assert isinstance(first, Deferred)
        self.successResultOf(self.h.purged(self.h.registry.invalidate_tags("t1", ["object:9"])))
        after = self.h.get("t1", key(route="list"), "list")
        assert isinstance(after, Deferred)
        assert len(self.h.upstream.pending) == 2, "a request after the purge must not join the old fetch"
        self.h.answer(b"object:9", body=b"old")
        assert self.successResultOf(first).response.body == b"old"
        self.h.answer(b"object:9", body=b"new")
        assert self.successResultOf(after).response.body == b"new"
        hit = self.h.get("t1", key(route="list"), "list")
        assert isinstance(hit, CacheResult) and hit.response.body == b"new"

    def test_race_rule_the_old_answer_is_not_stored(self) -> None:
        first = self.h.get("t1", key(route="list"), "list")
        self.successResultOf(self.h.purged(self.h.registry.invalidate_tags("t1", ["object:9"])))
        self.h.answer(b"object:9", body=b"old")
        assert self.successResultOf(first).response.body == b"old"
        assert isinstance(self.h.get("t1", key(route="list"), "list"), Deferred)

    def test_a_purge_of_another_tag_lets_the_answer_be_stored(self) -> None:
        first = self.h.get("t1", key(route="list"), "list")
        self.successResultOf(self.h.purged(self.h.registry.invalidate_tags("t1", ["object:8"])))
        self.h.answer(b"object:9")
        self.successResultOf(first)
        assert isinstance(self.h.get("t1", key(route="list"), "list"), CacheResult)

    def test_a_purge_of_another_tenant_lets_the_answer_be_stored(self) -> None:
        first = self.h.get("t1", key(route="list"), "list")
        self.successResultOf(self.h.purged(self.h.registry.invalidate_tags("t2", ["object:9"])))
        self.h.answer(b"object:9")
        self.successResultOf(first)
        assert isinstance(self.h.get("t1", key(route="list"), "list"), CacheResult)

    def test_too_many_tags_is_served_but_not_stored(self) -> None:
        d = self.h.get("t1", key(route="list"), "list")
        self.h.answer(*(b"t%d" % i for i in range(65)))
        result = self.successResultOf(d)
        assert result.cache == MISS
        assert result.member is not None and b"detail=tags" in result.member
        assert b"stored" not in result.member.split(b";")
        assert isinstance(self.h.get("t1", key(route="list"), "list"), Deferred)
        assert self.h.registry.counters["tags_refused"] == 1

    def test_refresh_by_tag_serves_stale_once_and_refetches(self) -> None:
        self.fill("t1", key(route="list"), "list", b"p")
        assert self.successResultOf(self.h.purged(self.h.registry.refresh_tags("t1", ["p"], "event"))) == 1
        stale = self.h.get("t1", key(route="list"), "list")
        assert isinstance(stale, CacheResult) and stale.cache == STALE
        assert len(self.h.upstream.pending) == 1
        self.h.answer(b"p", body=b"fresh")
        hit = self.h.get("t1", key(route="list"), "list")
        assert isinstance(hit, CacheResult) and (hit.cache, hit.response.body) == (HIT, b"fresh")
        assert self.h.registry.tag_purges["event"] == 1

    def test_entries_dropped_per_purge_are_observed(self) -> None:
        self.fill("t1", key(id="1"))
        self.fill("t1", key(id="2"))
        self.successResultOf(self.h.purged(self.h.registry.invalidate_tags("t1", ["objects"], "write")))
        assert self.h.registry.tag_purges["write"] == 1
        assert self.h.registry.tag_dropped.sum == 2


# -- the memory store's index --------------------------------------------------


def entry(tags: tuple[str, ...], body: bytes = b"x" * 100) -> CachedResponse:
    return CachedResponse(200, (), body, 0.0, 1e12, 1e12, tags=tags)


class MemoryIndexTests(SynchronousTestCase):
    def test_a_purge_of_many_entries_is_freed_in_batches_across_turns(self) -> None:
        clock = Clock()
        store = MemoryStore(1 << 30, clock=clock)
        empty = store.stats()["bytes"]
        n = REAP_BATCH * 5 + 7
        for i in range(n):
            assert store.put_now(key(id=str(i)), entry(("big",)), 0)
        full = store.stats()["bytes"]
        d = store.purge_tag("t1", "big")
        # nothing freed yet, and unreadable at once
        assert store.stats()["entries"] == n
        assert store.lookup(key(id=str(n - 1))) is None
        turns = 0
        while store.tags.reaping:
            assert len(clock.calls) == 1
            turn = clock.calls.pop(0)
            turn.func(*turn.args, **turn.kw)
            turns += 1
            left = n - REAP_BATCH * turns
            # (less the one the lookup dropped itself)
            assert left - 1 <= store.stats()["entries"] <= max(0, left)
        assert turns == 6
        assert self.successResultOf(d) == n
        assert store.stats() == {"entries": 0, "bytes": empty, "evictions": 0}
        assert full > empty
        assert store.tag_stats() == {"tags": 0, "pairs": 0}

    def test_the_index_counts_in_the_budget_and_evicted_entries_leave_it(self) -> None:
        tags = tuple(f"tag-{i}" for i in range(10))
        plain, tagged = MemoryStore(1 << 20), MemoryStore(1 << 20)
        plain.put_now(key(), entry(()), 0)
        tagged.put_now(key(), entry(tags), 0)
        assert tagged.stats()["bytes"] - plain.stats()["bytes"] == TagIndex.charge(tags) > 10 * 48
        small = MemoryStore(3 * (tagged.stats()["bytes"]))
        for i in range(10):
            small.put_now(key(id=str(i)), entry(tags), 0)
        assert small.stats()["entries"] == 3
        assert small.tag_stats() == {"tags": 10, "pairs": 30}
        assert small.stats()["bytes"] <= small.max_bytes

    def test_an_entry_stored_again_after_a_purge_is_not_reaped(self) -> None:
        clock = Clock()
        store = MemoryStore(1 << 30, clock=clock)
        for i in range(REAP_BATCH + 10):
            store.put_now(key(id=str(i)), entry(("a",)), 0)
        token = self.successResultOf(store.begin(key()))
        purged = store.purge_tag(None, "a")
        last = key(id=str(REAP_BATCH + 9))
        token = self.successResultOf(store.begin(last))
        assert store.put_now(last, entry(("a",), b"new"), token)
        clock.advance(0)
        assert self.successResultOf(purged) == REAP_BATCH + 10
        found = store.lookup(last)
        assert found is not None and found.body == b"new"
        assert store.stats()["entries"] == 1

    def test_expired_entries_leave_the_index_when_evicted(self) -> None:
        store = MemoryStore(1 << 20)
        store.put_now(key(), entry(("a", "b")), 0)
        store.discard(key())
        assert store.tag_stats() == {"tags": 0, "pairs": 0}


@given(
    entries=st.lists(
        st.tuples(
            st.sampled_from(["acme", "globex", "initech"]),
            st.integers(0, 20),
            st.lists(st.sampled_from(["a", "b", "c", "object:1"]), min_size=1, max_size=3, unique=True),
        ),
        max_size=40,
    ),
    purges=st.lists(
        st.tuples(st.sampled_from(["acme", "globex", "initech"]), st.sampled_from(["a", "b", "c", "object:1"])),
        max_size=5,
    ),
)
def test_no_tag_of_one_tenant_ever_drops_another_tenants_entry(entries, purges) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    store = MemoryStore(1 << 30, clock=clock)
    held: dict[CacheKey, tuple[str, ...]] = {}
    for tenant, i, tags in entries:
        k = key(tenant, id=str(i))
        assert store.put_now(k, entry(tuple(tags)), 0)
        held[k] = tuple(tags)
    for tenant, tag in purges:
        store.purge_tag(tenant, tag)
        clock.advance(0)
        for k, tags in held.items():
            found = store.lookup(k)
            if k.tenant == tenant and tag in tags:
                assert found is None
                held[k] = ()  # gone for good
            elif tags:
                assert found is not None, (k, tags, tenant, tag)
    clock.advance(0)
    # the index holds exactly the pairs of the entries left
    assert store.tag_stats()["pairs"] == sum(len(tags) for tags in held.values())


# -- events ------------------------------------------------------------------


def test_an_event_rule_with_tags_only_makes_a_tag_action() -> None:
    rule = EventRule(types=("object.update",), route="", tenant_field="org", tags=("object:{objectid}", "list:{list}"))
    decoder = EventDecoder([rule], [OBJ])
    actions = decoder.decode(json.dumps({"type": "object.update", "objectid": 42, "list": "p1", "org": "acme"}).encode())
    assert actions == [CacheAction("invalidate", "acme", "", (), ("object:42", "list:p1"))]
    with pytest.raises(BadEvent, match="lacks field 'list'"):
        decoder.decode(json.dumps({"type": "object.update", "objectid": 42}).encode())
    with pytest.raises(BadEvent, match="not a tag"):
        decoder.decode(json.dumps({"type": "object.update", "objectid": "a b", "list": 1}).encode())


def test_an_event_rule_with_a_route_and_tags_makes_both_actions() -> None:
    rule = EventRule(
        types=("u",), route="object", fields={"id": "oid"}, action="refresh", tags=("object:{oid}",)
    )
    actions = EventDecoder([rule], [OBJ]).decode(b'{"type": "u", "oid": "7"}')
    assert actions == [
        CacheAction("refresh", None, "object", ("7",)),
        CacheAction("refresh", None, "", (), ("object:7",)),
    ]


# -- DELETE /tags/<tag> --------------------------------------------------------


def api(h: Harness, server: dict[str, object] | None = None) -> tuple[CacheAPI, StubTreq]:
    settings = {
        "server": server or {"allow_anonymous": True},
        "upstream": {"base_url": "http://up", "tags_header": "surrogate-key"},
        "routes": [{"type": "object", "path": "/o/<id>", "upstream": "/o/{id}", "tags": ["object:{id}"]}],
    }
    a = InMemoryAPI(settings, registry=h.registry, clock=h.clock, node=None)
    return a.api, a.treq


class PurgeRouteTests(SynchronousTestCase):
    def test_delete_tags_purges_a_tenant_or_every_tenant(self) -> None:
        h = Harness(clock_reaps=False)
        for t in ("acme", "globex"):
            d = h.get(t, key(t))
            h.answer(b"caf\xc3\xa9")
            self.successResultOf(d)
        _, client = api(h)
        r = self.successResultOf(client.delete("http://x/tags/caf%C3%A9", headers={"org_id": "acme"}))
        assert r.code == 200
        assert json.loads(self.successResultOf(r.content())) == {"invalidated": 1}
        assert isinstance(h.get("globex", key("globex")), CacheResult)
        r = self.successResultOf(client.delete("http://x/tags/caf%C3%A9"))
        assert json.loads(self.successResultOf(r.content())) == {"invalidated": 1}
        assert isinstance(h.get("globex", key("globex")), Deferred)

    def test_a_purge_of_every_tenant_needs_an_admin_key_once_they_are_set(self) -> None:
        h = Harness(clock_reaps=False)
        d = h.get("acme", key("acme"))
        h.answer(b"x")
        self.successResultOf(d)
        _, client = api(h, {"api_keys": ["user"], "admin_api_keys": ["boss"]})
        r = self.successResultOf(client.delete("http://x/tags/object:1", headers={"api-key": "user"}))
        assert r.code == 403
        assert json.loads(self.successResultOf(r.content()))["error"] == "admin_required"
        assert isinstance(h.get("acme", key("acme")), CacheResult), "a refused purge drops nothing"
        r = self.successResultOf(client.delete("http://x/tags/object:1", headers={"api-key": "user", "org_id": "acme"}))
        assert (r.code, json.loads(self.successResultOf(r.content()))) == (200, {"invalidated": 1})
        r = self.successResultOf(client.delete("http://x/tags/object:1", headers={"api-key": "boss"}))
        assert (r.code, json.loads(self.successResultOf(r.content()))) == (200, {"invalidated": 0})

    def test_a_tag_that_is_not_one_is_a_400(self) -> None:
        _, client = api(Harness())
        r = self.successResultOf(client.delete("http://x/tags/a%20b"))
        assert r.code == 400
        assert json.loads(self.successResultOf(r.content()))["error"] == "invalid_parameter"

    def test_get_on_a_tag_path_is_not_a_purge(self) -> None:
        _, client = api(Harness())
        r = self.successResultOf(client.get("http://x/tags/a", headers={"org_id": "acme"}))
        assert r.code in (404, 405)


def test_forgotten_generations_drop_nothing_and_refuse_only_that_tenants_older_fetches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    The generations kept are bounded; past the bound, a tenant's oldest is
    forgotten: no entry is dropped (SPEC.md section 3, v3), and a tagged
    answer of a fetch that tenant began before it is not stored (the race
    rule, conservatively), while another tenant's is.
    """
    import apicache.store.tagindex as tagindex

    monkeypatch.setattr(tagindex, "MAX_GENERATIONS", 3)
    store = MemoryStore(1 << 20)
    store.put_now(key(id="old"), entry(("kept",)), 0)
    store.put_now(key(id="plain"), entry(()), 0)
    before = store._epoch
    for i in range(4):
        store.purge_tag("t1", f"gone-{i}")
    assert store.tags.generations == 3
    assert store.lookup(key(id="old")) is not None
    assert store.lookup(key(id="plain")) is not None
    assert not store.put_now(key(id="late"), entry(("kept",)), before)
    assert store.put_now(key("t2", id="late"), entry(("kept",)), before)
    token = store._epoch
    assert store.put_now(key(id="new"), entry(("kept",)), token)
    assert store.lookup(key(id="new")) is not None
