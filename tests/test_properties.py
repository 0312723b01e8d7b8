"""
Hypothesis properties of SPEC.md section 3: tenant isolation, the byte
budget, canonical queries, parameter validation and the race rule.
"""

from __future__ import annotations

import itertools
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from apicache.cache.keys import CacheKey, InvalidParameter, canonical_query, decode_parameter, variant
from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import Router
from apicache.cache.tenant import HIT, CacheResult, FetchRequest
from apicache.config import RouteConfig, parse_config
from apicache.store.interface import ENTRY_OVERHEAD, CachedResponse
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream

ROUTE = RouteConfig("object", "/o/<id>", "/o/{id}", ttl=10.0, params=("id",), fingerprint="f")
TENANTS = ["a", "b", "c"]

# --- tenant isolation ------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("get"), st.sampled_from(TENANTS), st.sampled_from("12"), st.sampled_from(["de", "en"])),
        st.tuples(st.just("invalidate"), st.sampled_from([*TENANTS, None]), st.sampled_from("12")),
        st.tuples(st.just("clear"), st.sampled_from([*TENANTS, None])),
        st.tuples(st.just("advance"), st.floats(0, 12)),
        st.tuples(st.just("respond"), st.integers(0, 5)),
    ),
    max_size=40,
)


@given(ops)
def test_no_sequence_lets_a_tenant_read_another_tenants_entry(operations):
    clock = Clock()
    upstream = FakeUpstream()
    store = MemoryStore(1 << 20)
    registry = CacheRegistry(store, upstream, clock, [ROUTE], ("accept-language",))
    answers: list[tuple[str, Deferred | CacheResult]] = []
    counter = itertools.count()
    for op in operations:
        if op[0] == "get":
            _, tenant, id_, lang = op
            k = CacheKey(tenant, "object", (id_,), variant("f", "", [lang]))
            # the upstream sees which tenant asked through this header
            request = FetchRequest(f"/o/{id_}", [(b"x-tenant", tenant.encode())])
            answers.append((tenant, registry.cache(tenant, "object").get(k, request)))
        elif op[0] == "invalidate":
            registry.invalidate(op[1], "object", (op[2],))
        elif op[0] == "clear":
            registry.clear(op[1])
        elif op[0] == "advance":
            clock.advance(op[1])
        elif upstream.pending:
            p = upstream.pending[op[1] % len(upstream.pending)]
            tenant = dict(p.headers)[b"x-tenant"]
            p.respond(body=tenant + b":%d" % next(counter))
    for p in list(upstream.pending):
        p.respond(body=dict(p.headers)[b"x-tenant"] + b":last")
    for tenant, answer in answers:
        if isinstance(answer, Deferred):
            got: list[CacheResult] = []
            answer.addCallback(got.append)
            answer = got[0]
        assert answer.response.body.split(b":")[0] == tenant.encode()


# --- the byte budget -------------------------------------------------------

entries = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(TENANTS),
            st.text("xyzä", min_size=1, max_size=3),
            st.integers(0, 3000),
            st.lists(st.tuples(st.sampled_from([b"etag", b"content-type"]), st.binary(max_size=50)), max_size=3),
        ),
        st.tuples(st.just("invalidate"), st.sampled_from([*TENANTS, None]), st.text("xyzä", min_size=1, max_size=3)),
        st.tuples(st.just("clear"), st.sampled_from([*TENANTS, None])),
        st.tuples(st.just("lookup"), st.sampled_from(TENANTS), st.text("xyzä", min_size=1, max_size=3)),
    ),
    max_size=60,
)


@given(st.integers(600, 20000), st.floats(0.05, 1.0), entries)
def test_the_byte_budget_is_never_exceeded(max_bytes, fraction, operations):
    store = MemoryStore(max_bytes, int(max_bytes * fraction))
    for op in operations:
        if op[0] == "put":
            _, tenant, id_, size, headers = op
            k = CacheKey(tenant, "object", (id_,), "v")
            store.put_now(k, CachedResponse(200, tuple(headers), b"x" * size), store._epoch)
        elif op[0] == "invalidate":
            store.invalidate(op[1], "object", (op[2],))
        elif op[0] == "clear":
            store.clear(op[1])
        else:
            store.lookup(CacheKey(op[1], "object", (op[2],), "v"))
        held = sum(slot.entry.size() + k.size() + ENTRY_OVERHEAD for k, slot in store._slots.items())
        assert store.stats()["bytes"] == held <= max_bytes
        assert store.stats()["entries"] == len(store._slots)


# --- canonical queries -------------------------------------------------------

names = st.text("abcAB_-.~%=&+ ä/?", min_size=1, max_size=5)
pairs = st.lists(st.tuples(names, st.text("abc 1=&+%ä/", max_size=5)), max_size=6)


def encode_query(items):
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in items).encode()


@given(pairs, st.randoms())
def test_the_key_does_not_depend_on_query_parameter_order(items, random):
    # same-name parameters keep their relative order: shuffle only across names
    shuffled = list(items)
    random.shuffle(shuffled)
    by_name = {}
    for k, v in items:
        by_name.setdefault(k, []).append(v)
    reordered = []
    seen = set()
    for k, _ in shuffled:
        if k not in seen:
            seen.add(k)
            reordered += [(k, v) for v in by_name[k]]
    assert canonical_query(encode_query(items)) == canonical_query(encode_query(reordered))
    # and the canonical form is a fixed point
    once = canonical_query(encode_query(items))
    assert canonical_query(once.encode()) == once


# --- parameter validation ----------------------------------------------------

ordinary = st.text("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_~", min_size=1, max_size=40)
cores = st.sampled_from(["/", "\\", "..", "\x00", "\n", "\r", "\t", "\x7f", "\x1b", "\x85"])


def pct(s: str) -> str:
    return "".join(f"%{b:02X}" for b in s.encode())


encodings = st.sampled_from(
    [
        lambda s: s,
        pct,
        lambda s: pct(s).lower(),
        lambda s: pct(s).replace("%", "%25"),
        lambda s: pct(s).lower().replace("%", "%25"),
    ]
)

CONFIG = parse_config(
    {
        "server": {"allow_anonymous": True},
        "upstream": {"base_url": "http://u"},
        "routes": [{"type": "t", "path": "/t/<id>/x", "upstream": "/t/{id}"}],
    },
    "t.toml",
    {},
)
ROUTER = Router(CONFIG.routes)


@given(ordinary, cores, ordinary, encodings)
def test_every_traversal_form_is_rejected(before, core, after, encode):
    raw = (quote(before) + encode(core) + quote(after)).encode()
    found = ROUTER.match(b"/t/" + raw + b"/x")
    if found is None:
        return  # a bare '/' splits the path: no route, a 404
    route, params = found
    try:
        value = route.decode(params)
    except InvalidParameter:
        return
    raise AssertionError(f"accepted {raw!r} as {value!r}")


@given(st.one_of(ordinary, st.text(min_size=1, max_size=30)))
def test_ordinary_ids_are_accepted_and_round_trip(value):
    bad = any(c in value for c in "/\\") or ".." in value or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value)
    bad = bad or "%" in value or len(value.encode("utf-8", "surrogatepass")) > 512
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return
    if bad:
        return
    raw = quote(value, safe="").encode()
    route, params = ROUTER.match(b"/t/" + raw + b"/x")
    assert route.decode(params) == (value,)
    assert decode_parameter("id", quote(value, safe="")) == value
    assert route.upstream_path((value,), "") == "/t/" + quote(value, safe="")


# --- the race rule -----------------------------------------------------------

steps = st.lists(
    st.one_of(st.just(("get",)), st.just(("invalidate",)), st.tuples(st.just("end"), st.integers(0, 10))),
    max_size=30,
)


@given(steps)
def test_race_rule_holds_for_any_interleaving(operations):
    clock = Clock()
    upstream = FakeUpstream()
    store = MemoryStore(1 << 20)
    registry = CacheRegistry(store, upstream, clock, [ROUTE], ())
    cache = registry.cache("a", "object")
    k = CacheKey("a", "object", ("1",), "v")
    stored: bytes | None = None
    # per pending fetch: whether an invalidation arrived since it started,
    # and the callers waiting for it
    fetches: dict[int, dict] = {}
    bodies = itertools.count()
    for op in operations:
        if op[0] == "get":
            n = len(upstream.fetched)
            answer = cache.get(k, FetchRequest("/o/1", []))
            if stored is not None:
                assert isinstance(answer, CacheResult) and answer.cache == HIT
                assert answer.response.body == stored
                continue
            assert isinstance(answer, Deferred)
            current = [p for p, f in fetches.items() if not f["invalidated"]]
            if current:
                # a fetch that started after the last invalidation is shared
                assert len(upstream.fetched) == n
                fetches[current[0]]["waiters"].append(answer)
            else:
                # none, or only fetches overtaken by an invalidation: a new one
                assert len(upstream.fetched) == n + 1
                fetches[id(upstream.fetched[-1])] = {"invalidated": False, "waiters": [answer]}
        elif op[0] == "invalidate":
            registry.invalidate("a", "object", ("1",))
            stored = None
            for f in fetches.values():
                f["invalidated"] = True
        elif upstream.pending:
            p = upstream.pending[op[1] % len(upstream.pending)]
            f = fetches.pop(id(p))
            body = b"%d" % next(bodies)
            p.respond(body=body)
            if not f["invalidated"]:
                stored = body
            for w in f["waiters"]:
                got: list[CacheResult] = []
                w.addCallback(got.append)
                assert got[0].response.body == body
        held = store.lookup(k)
        assert (held.body if held else None) == stored
