"""
Variants in the cache core (SPEC.md section 3, v3; RFC 9111 section 4.1):
answers whose C{Vary} names request fields are stored under one key, up
to the route's C{max_variants}, told apart by the request's values for
those fields; the normalised C{Accept-Encoding} selects like a C{Vary}
field; coalesced waiters share an answer only when their values select
it; purges, the race rule, tags, the memory budget and fair share cover
every variant.  On a task.Clock with an upstream whose answers the test
hands out, and the real memory store.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from apicache.cache import variants as variants_module
from apicache.cache.keys import CacheKey, base_key, variant_key
from apicache.cache.registry import CacheRegistry
from apicache.cache.tenant import HIT, MISS, CacheResult, FetchRequest
from apicache.config import RouteConfig, UpstreamConfig
from apicache.store.interface import ENTRY_OVERHEAD, VARIANT_OVERHEAD
from apicache.store.memory import MemoryStore
from apicache.store.tagindex import TagIndex
from apicache.testing import FakeUpstream

CT = (b"content-type", b"application/json")
VARY_LANG = (b"vary", b"Accept-Language")
KEY = CacheKey("t1", "object", ("1",), "fp\x00")
#: accept-language is forwarded but not keyed here: its values are told
#: apart by variants only
UPSTREAM = UpstreamConfig(unkeyed_headers=("authorization", "x-correlationid", "accept-language"))


def route(**kw: Any) -> RouteConfig:
    base: dict[str, Any] = dict(ttl=10.0, params=("id",), fingerprint="f")
    base.update(kw)
    return RouteConfig("object", "/o/<id>", "/o/{id}", **base)


def request(encoding: bytes = b"identity", **headers: str) -> FetchRequest:
    """
    A caller's request: its headers (underscores for dashes) as Twisted
    holds them, the forwarded ones as the HTTP layer makes them.
    """
    caller = Headers()
    forwarded = []
    for name, value in headers.items():
        field = name.replace("_", "-").encode()
        caller.addRawHeader(field, value.encode())
        forwarded.append((field, value.encode()))
    forwarded.append((b"accept-encoding", encoding))
    return FetchRequest("/o/1", forwarded, encoding, caller)


class Harness(SynchronousTestCase):
    route = route()

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryStore(1 << 20, clock=self.clock)
        self.upstream = FakeUpstream()
        self.registry = CacheRegistry(self.store, self.upstream, self.clock, [self.route], (), upstream_config=UPSTREAM)

    @property
    def cache(self) -> Any:
        return self.registry.cache("t1", "object")

    def get(self, req: FetchRequest | None = None, key: CacheKey = KEY) -> Any:
        return self.cache.get(key, req or request())

    def answer(self, body: bytes = b"{}", headers: Any = (CT, VARY_LANG), status: int = 200, i: int = 0) -> None:
        self.upstream.pending[i].respond(status, body, list(headers))

    def fetched(self, d: Any, body: bytes = b"{}", headers: Any = (CT, VARY_LANG), status: int = 200) -> CacheResult:
        assert isinstance(d, Deferred), d
        self.answer(body, headers, status)
        return self.successResultOf(d)

    def hit(self, req: FetchRequest) -> CacheResult:
        r = self.get(req)
        assert isinstance(r, CacheResult), r
        assert r.cache == HIT
        return r

    def store_lang(self, lang: str, body: bytes | None = None) -> CacheResult:
        r = self.fetched(self.get(request(accept_language=lang)), body or lang.encode())
        assert r.stored, r.member
        return r


class VaryTests(Harness):
    def test_a_new_value_is_a_vary_miss_and_its_answer_a_new_variant(self) -> None:
        """RFC 9111 section 4.1: one key, a variant per selecting value."""
        first = self.store_lang("en")
        assert first.member == b"apicache;fwd=uri-miss;fwd-status=200;stored"
        d = self.get(request(accept_language="de"))
        assert isinstance(d, Deferred)
        assert (b"accept-language", b"de") in self.upstream.pending[0].headers
        second = self.fetched(d, b"de")
        assert (second.cache, second.member) == (MISS, b"apicache;fwd=vary-miss;fwd-status=200;stored")
        assert self.hit(request(accept_language="en")).response.body == b"en"
        assert self.hit(request(accept_language="de")).response.body == b"de"
        assert len(self.upstream.fetched) == 2
        assert [v.vary for v in self.store.variants(KEY)] == [(b"accept-language",)] * 2
        assert self.store.lookup(KEY) is None
        assert self.store.stats()["entries"] == 2

    def test_values_are_normalised_before_they_are_compared(self) -> None:
        """
        RFC 9111 section 4.1 and SPEC.md section 3: field lines combined,
        whitespace around commas and at the ends removed; accept-language
        compared case-insensitively.
        """
        self.store_lang("en, de")
        for same in (" en ,   de", "EN,DE", "en,de "):
            assert self.hit(request(accept_language=same)).response.body == b"en, de"
        caller = Headers({b"accept-language": [b"en ", b" de"]})
        two_lines = FetchRequest("/o/1", [], b"identity", caller)
        assert self.hit(two_lines).response.body == b"en, de"
        assert isinstance(self.get(request(accept_language="de, en")), Deferred)

    def test_other_fields_compare_byte_for_byte(self) -> None:
        """
        SPEC.md section 3: only the accept* fields compare
        case-insensitively; Vary on authorization (forwarded, unkeyed)
        gives one variant per token.
        """
        vary = (CT, (b"vary", b"authorization"))
        r = self.fetched(self.get(request(authorization="Bearer a")), b"a", vary)
        assert r.stored
        assert self.hit(request(authorization="Bearer a")).response.body == b"a"
        d = self.get(request(authorization="bearer a"))
        assert isinstance(d, Deferred)
        assert self.fetched(d, b"other", vary).member.endswith(b"fwd=vary-miss;fwd-status=200;stored")
        assert self.hit(request(authorization="Bearer a")).response.body == b"a"
        assert self.hit(request(authorization="bearer a")).response.body == b"other"

    def test_absent_and_empty_are_different_values(self) -> None:
        """RFC 9111 section 4.1: a field absent from both requests matches."""
        self.fetched(self.get(request()), b"none")
        assert self.hit(request()).response.body == b"none"
        d = self.get(request(accept_language=""))
        assert isinstance(d, Deferred)
        self.fetched(d, b"empty")
        assert self.hit(request()).response.body == b"none"
        assert self.hit(request(accept_language="")).response.body == b"empty"

    def test_vary_star_is_never_stored(self) -> None:
        """RFC 9111 section 4.1: a Vary holding * matches no request."""
        r = self.fetched(self.get(request(accept_language="en")), b"x", (CT, (b"vary", b"accept-language, *")))
        assert (r.cache, r.stored) == (MISS, False)
        assert r.member.endswith(b"detail=vary")
        assert self.store.stats()["entries"] == 0

    def test_a_field_vary_names_but_apicache_does_not_forward(self) -> None:
        """
        RFC 9111 section 4.1 compares the caller's request with the one
        that fetched the stored answer, whatever the upstream was sent.
        """
        vary = (CT, (b"vary", b"x-flavour"))
        self.fetched(self.get(request(x_flavour="sweet")), b"sweet", vary)
        assert self.hit(request(x_flavour="sweet")).response.body == b"sweet"
        assert isinstance(self.get(request(x_flavour="sour")), Deferred)

    def test_the_most_recent_of_several_matching_variants_is_served(self) -> None:
        """RFC 9111 section 4.1: several match, the one with the newest Date."""
        self.fetched(self.get(request(accept_language="en")), b"lang", (CT, VARY_LANG, (b"date", b"Sun, 06 Nov 1994 08:49:37 GMT")))
        later = (CT, (b"vary", b"x-flavour"), (b"date", b"Sun, 06 Nov 1994 08:50:37 GMT"))
        d = self.get(request(accept_language="de", x_flavour="sweet"))
        self.fetched(d, b"flavour", later)
        both = request(accept_language="en", x_flavour="sweet")
        assert self.hit(both).response.body == b"flavour"
        assert self.hit(request(accept_language="en")).response.body == b"lang"


class MaxVariantsTests(Harness):
    route = route(max_variants=2)

    def test_past_max_variants_the_least_recently_used_goes(self) -> None:
        """SPEC.md section 2: max_variants, least recently used first out."""
        self.store_lang("en")
        self.store_lang("de")
        self.hit(request(accept_language="en"))
        self.store_lang("fr")
        assert self.hit(request(accept_language="en")).response.body == b"en"
        assert self.hit(request(accept_language="fr")).response.body == b"fr"
        assert isinstance(self.get(request(accept_language="de")), Deferred)
        assert self.store.stats()["entries"] == 2

    def test_the_same_values_replace_their_variant(self) -> None:
        self.store_lang("en")
        self.clock.advance(11)
        self.store_lang("en", b"en2")
        assert len(self.store.variants(KEY)) == 1
        assert self.hit(request(accept_language="en")).response.body == b"en2"


class AcceptEncodingTests(Harness):
    """SPEC.md section 3 (v3): the normalised Accept-Encoding selects like a Vary field."""

    def test_an_identity_answer_serves_gzip_and_identity_callers(self) -> None:
        self.fetched(self.get(request(b"gzip")), b"plain", (CT,))
        assert self.hit(request(b"identity")).response.body == b"plain"
        assert self.hit(request(b"gzip")).response.body == b"plain"
        assert len(self.upstream.fetched) == 1
        # one entry, no list of variants: the fast case
        assert self.store.lookup(KEY) is not None and self.store.variants(KEY) == ()

    def test_a_gzip_answer_serves_only_callers_that_admit_gzip(self) -> None:
        gz = (CT, (b"content-encoding", b"gzip"))
        r = self.fetched(self.get(request(b"gzip")), b"packed", gz)
        assert r.stored
        assert self.hit(request(b"gzip")).response.body == b"packed"
        d = self.get(request(b"identity"))
        assert isinstance(d, Deferred)
        assert (b"accept-encoding", b"identity") in self.upstream.pending[0].headers
        # the identity answer serves every caller from now on
        r = self.fetched(d, b"plain", (CT,))
        assert r.member == b"apicache;fwd=vary-miss;fwd-status=200;stored"
        assert self.hit(request(b"gzip")).response.body == b"plain"
        assert self.store.variants(KEY) == ()

    def test_vary_accept_encoding_compares_the_normalised_value(self) -> None:
        vary = (CT, (b"vary", b"accept-encoding"))
        self.fetched(self.get(request(b"identity", accept_encoding="br")), b"plain", vary)
        # identity again, whatever the caller's own header said
        assert self.hit(request(b"identity", accept_encoding="compress")).response.body == b"plain"
        assert isinstance(self.get(request(b"gzip", accept_encoding="gzip")), Deferred)


class CoalescingTests(Harness):
    """SPEC.md section 3: waiters share an answer their values select."""

    def test_waiters_with_the_leaders_values_share_its_variant(self) -> None:
        ds = [self.get(request(accept_language=v)) for v in ("en", "EN", " en ")]
        assert len(self.upstream.fetched) == 1
        self.answer(b"en")
        assert {self.successResultOf(d).response.body for d in ds} == {b"en"}
        assert self.registry.counters["coalesced"] == 2

    def test_a_waiter_another_variant_fits_fetches_with_its_own_headers(self) -> None:
        leader = self.get(request(accept_language="en"))
        waiter = self.get(request(accept_language="de"))
        assert len(self.upstream.fetched) == 1
        self.answer(b"en")
        assert self.successResultOf(leader).response.body == b"en"
        self.assertNoResult(waiter)
        assert (b"accept-language", b"de") in self.upstream.pending[0].headers
        self.answer(b"de")
        r = self.successResultOf(waiter)
        assert (r.response.body, r.member) == (b"de", b"apicache;fwd=vary-miss;fwd-status=200;stored")
        assert self.hit(request(accept_language="en")).response.body == b"en"
        assert self.hit(request(accept_language="de")).response.body == b"de"

    def test_an_answer_without_vary_is_shared_by_every_waiter(self) -> None:
        ds = [self.get(request(accept_language=v)) for v in ("en", "de")]
        self.answer(b"one", (CT,))
        assert {self.successResultOf(d).response.body for d in ds} == {b"one"}
        assert len(self.upstream.fetched) == 1

    def test_once_variants_are_known_each_value_has_a_fetch_of_its_own(self) -> None:
        self.store_lang("en")
        de = [self.get(request(accept_language="de")) for _ in range(3)]
        fr = self.get(request(accept_language="fr"))
        # one fetch per value, none waiting for another value's
        assert [dict(p.headers)[b"accept-language"] for p in self.upstream.pending] == [b"de", b"fr"]
        self.answer(b"de")
        assert {self.successResultOf(d).response.body for d in de} == {b"de"}
        self.answer(b"fr")
        assert self.successResultOf(fr).response.body == b"fr"


class CoverageTests(Harness):
    """Purges, the race rule, tags, memory accounting and fair share cover every variant."""

    route = route(tags=("object:{id}",))

    def test_a_purge_drops_every_variant(self) -> None:
        self.store_lang("en")
        self.store_lang("de")
        assert self.successResultOf(self.registry.invalidate("t1", "object", ("1",))) == 2
        assert self.store.variants(KEY) == ()
        assert self.store.stats() == {"entries": 0, "bytes": 0, "evictions": 0}
        assert isinstance(self.get(request(accept_language="en")), Deferred)

    def test_a_tag_purge_drops_every_variant(self) -> None:
        self.store_lang("en")
        self.store_lang("de")
        self.successResultOf(self.registry.invalidate_tags("t1", ["object:1"]))
        assert isinstance(self.get(request(accept_language="en")), Deferred)
        assert isinstance(self.get(request(accept_language="de")), Deferred)

    def test_an_invalidation_during_a_variant_fetch_wins(self) -> None:
        """SPEC.md section 3, the race rule."""
        self.store_lang("en")
        d = self.get(request(accept_language="de"))
        self.successResultOf(self.registry.invalidate("t1", "object", ("1",)))
        r = self.fetched(d, b"de")
        assert (r.response.body, r.stored) == (b"de", False)
        assert self.store.stats()["entries"] == 0

    def test_variants_are_charged_to_the_budget(self) -> None:
        self.store_lang("en")
        self.store_lang("de")
        # each variant carries the route's tag, charged too
        charged = sum(
            self.store.lookup(variant_key(KEY, v.selector)).size()
            + variant_key(KEY, v.selector).size()
            + ENTRY_OVERHEAD
            + VARIANT_OVERHEAD
            + TagIndex.charge(("object:1",))
            for v in self.store.variants(KEY)
        )
        assert self.store.stats()["bytes"] == charged

    def test_fair_share_evicts_variants_and_keeps_the_lists_right(self) -> None:
        """SPEC.md section 3, fair share: a variant is an entry like any other."""
        store = MemoryStore(16 * 1024, clock=self.clock)
        registry = CacheRegistry(store, self.upstream, self.clock, [self.route], (), upstream_config=UPSTREAM)
        for i in range(40):
            d = registry.cache("t1", "object").get(KEY, request(accept_language=f"l{i}"))
            self.answer(b"x" * 300)
            self.successResultOf(d)
        assert store.stats()["bytes"] <= 16 * 1024
        held = store.variants(KEY)
        assert 0 < len(held) <= 16
        # every variant listed is held, and every variant held is listed
        assert all(store.lookup(variant_key(KEY, v.selector)) is not None for v in held)
        assert store.stats()["entries"] == len(held)
        # a newcomer within its share takes room from t1 above its share
        d = registry.cache("t2", "object").get(CacheKey("t2", "object", ("1",), "fp\x00"), request(accept_language="en"))
        self.answer(b"y" * 300)
        assert self.successResultOf(d).stored
        assert all(store.lookup(variant_key(KEY, v.selector)) is not None for v in store.variants(KEY))


class HitPathTests(Harness):
    def test_a_key_without_vary_computes_no_selector(self) -> None:
        """
        RFC 9111 section 4.1: the fast case.  A hit on an entry that serves
        every request (no Vary, no content coding) reduces no request to a
        selector: no digest is computed.
        """
        self.fetched(self.get(request(accept_language="en")), b"one", (CT,))
        calls = []
        real = variants_module._digest

        def counting(data: bytes) -> bytes:
            calls.append(data)
            return real(data)

        self.patch(variants_module, "_digest", counting)
        assert self.cache.hit(KEY, Headers({b"accept-language": [b"de"]}), b"gzip").response.body == b"one"
        assert self.hit(request(accept_language="fr")).response.body == b"one"
        assert calls == []

    def test_the_hit_path_selects_a_variant_from_the_callers_headers(self) -> None:
        self.store_lang("en")
        self.store_lang("de")
        hit = self.cache.hit(KEY, Headers({b"accept-language": [b"DE"]}))
        assert (hit.cache, hit.response.body) == (HIT, b"de")
        assert self.cache.hit(KEY, Headers({b"accept-language": [b"fr"]})) is None
        assert self.cache.hit(KEY) is None

    def test_only_if_cached_answers_the_selected_variant(self) -> None:
        """RFC 9111 sections 4.1 and 5.2.1.7: only-if-cached selects as a hit does."""
        self.store_lang("en")
        self.store_lang("de")
        found = self.cache.cached(KEY, Headers({b"accept-language": [b"de"]}))
        assert (found.cache, found.response.body) == (HIT, b"de")
        assert self.cache.cached(KEY, Headers({b"accept-language": [b"fr"]})) is None
        assert len(self.upstream.fetched) == 2

    def test_a_served_variant_becomes_the_most_recently_used(self) -> None:
        self.store_lang("en")
        self.store_lang("de")
        en = self.store.variants(KEY)[1]
        self.cache.hit(KEY, Headers({b"accept-language": [b"en"]}))
        assert self.store.variants(KEY)[0] == en


def test_variant_keys_name_the_same_resource() -> None:
    """RFC 9111 section 4.1: every variant of a key is of its resource."""
    k = variant_key(KEY, bytes(range(16)))
    assert (k.tenant, k.route, k.params) == (KEY.tenant, KEY.route, KEY.params)
    assert k != KEY and base_key(k) == KEY and base_key(KEY) is KEY
