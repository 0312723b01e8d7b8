"""
One tenant's cache for one route type (L{TenantCache}): a hit answered
synchronously, a miss as a Deferred, stale serving and background refresh,
bounded staleness, and what an answer becomes once stored.

Concurrent misses share one fetch (L{apicache.cache.coalesce}); what may be
stored, which headers are kept, how long an answer is fresh and how a 304
updates it are decided by the pure functions of L{apicache.cache.policy};
this module applies them.  The tenant caches are held by
L{apicache.cache.registry.CacheRegistry}.

This module imports neither Klein nor the HTTP layer nor the event listener:
they call into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from apicache.cache.coalesce import Flight, Flights
from apicache.cache.keys import CacheKey, variant_key
from apicache.cache.policy import (
    NEGATIVE,
    cache_control,
    current_age,
    freshness,
    governing_directives,
    header,
    http_date,
    is_fresh,
    not_stored_reason,
    replayed_headers,
    revalidation_matches,
    updated_headers,
    upstream_age,
    validators,
    varying_headers,
    withheld_fields,
    within_staleness,
)
from apicache.cache.tags import TooManyTags, answer_tags
from apicache.cache.targeted import DEFAULT_TARGETS
from apicache.cache.variants import ValuesOf, Variant, answer_variant, matches, pick_variant, selector
from apicache.cache.wire import date_header, header_block, shared_wire, status_member
from apicache.config import RouteConfig, UpstreamConfig
from apicache.store.interface import CachedResponse, CachedVariant, IStore, StoreUnavailable, Variants
from apicache.upstream.client import IUpstream, UpstreamError, UpstreamResponse, UpstreamUnreachable
from apicache.upstream.requestheaders import with_validators

if TYPE_CHECKING:
    from twisted.web.http_headers import Headers

    # the wiring passes the event watermark in; only its type is named here,
    # so that the cache core imports nothing of the event listener
    from apicache.events.watermark import Watermark

__all__ = [
    "HIT",
    "MISS",
    "STALE",
    "BYPASS",
    "REVALIDATED",
    "CacheResult",
    "FetchRequest",
    "Outcome",
    "TenantCache",
]

HIT = "HIT"
MISS = "MISS"
STALE = "STALE"
BYPASS = "BYPASS"
REVALIDATED = "REVALIDATED"
#: The request headers whose Vary made an answer unstorable by default in
#: version 2; (v3) such answers are stored as variants (RFC 9111 section
#: 4.1), and only C{Vary: *} is not stored.
DEFAULT_VARYING = varying_headers(UpstreamConfig())

#: Share of a route's ``max_staleness`` by which an entry's own bound may be
#: shorter (fixed per key): entries fetched before an outage cross their
#: bounds spread over this share instead of at one instant.
STALENESS_SPREAD = 0.2
#: ``Cache-Status`` detail of an entry held past its route's max_staleness.
EVENTS_BEHIND = "events-behind"

#: The name lists of stored variants, each kept once (L{TenantCache._variant}).
_VARIES: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}
_VARIES_KEPT = 1024

#: A failed background re-fetch is retried no sooner than this.
REFRESH_RETRY_SECONDS = 1.0
#: Buckets of the entries-per-tag-purge histogram.
#: No store token taken yet.
_NO_TOKEN = object()


class FetchRequest:
    """
    What to ask the upstream for on a caller's behalf: the encoded path and
    query under ``base_url``, the caller's forwarded headers (the
    normalised ``accept-encoding`` among them) and that encoding, and
    (v3) the caller's request headers, whose values for the fields a
    C{Vary} names select among a key's variants (RFC 9111 section 4.1).
    """

    __slots__ = ("path", "headers", "encoding", "caller")

    def __init__(
        self,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        encoding: bytes = b"identity",
        caller: Headers | None = None,
    ) -> None:
        """
        @param caller: the caller's request headers; without them, the
            forwarded ``headers`` stand for them.
        """
        self.path = path
        self.headers = headers
        self.encoding = encoding
        self.caller = caller

    def values_of(self, name: bytes) -> Sequence[bytes] | None:
        """
        Return the caller's field lines named ``name`` (lower case), or
        ``None`` (a L{ValuesOf}).
        """
        if self.caller is not None:
            return self.caller.getRawHeaders(name)
        return [v for k, v in self.headers if k == name] or None


class CacheResult:
    """
    An answer for a caller.

    @ivar cache: ``HIT``, ``STALE``, ``REVALIDATED``, ``MISS`` or ``BYPASS``.
    @ivar response: status, replayed headers and body.
    @ivar age: its age (``HIT``, ``STALE``, ``REVALIDATED``; the upstream's
        non-zero ``Age`` on a ``MISS``), else ``None``.
    @ivar member: apicache's ``Cache-Status`` member, or ``None`` for a
        hit (the writer adds ``hit;ttl=N``).
    @ivar stored: the answer is a stored entry, so a caller's conditional
        request may be answered from it (SPEC.md section 3).
    """

    __slots__ = ("cache", "response", "age", "member", "stored")

    def __init__(
        self,
        cache: str,
        response: CachedResponse,
        age: float | None = None,
        member: bytes | None = None,
        stored: bool = True,
    ) -> None:
        self.cache = cache
        self.response = response
        self.age = age
        self.member = member
        self.stored = stored

    def __repr__(self) -> str:
        return f"CacheResult({self.cache}, {self.response!r}, age={self.age})"


class Outcome:
    """
    The result of one upstream fetch, as shared with its waiters.

    @ivar storable: the answer may be shared with callers of other headers
        (those its C{variant} selects).
    @ivar status: the arguments of its L{status_member}.
    @ivar own: the answer as the caller whose request fetched it gets it,
        when it differs from the shared one: with the fields a qualified
        ``no-cache="…"`` names (RFC 9111 section 5.2.2.4), which waiters
        and the stored copy never see.
    @ivar variant: what tells the answer apart from its key's other
        variants, or C{None} when it serves every request of its key.
    """

    __slots__ = ("cache", "answer", "storable", "bypass", "status", "stored", "age", "own", "variant")

    def __init__(
        self,
        cache: str,
        answer: CachedResponse,
        storable: bool,
        bypass: bool,
        status: dict[str, Any],
        stored: bool = False,
    ) -> None:
        self.cache = cache
        self.answer = answer
        self.storable = storable
        self.bypass = bypass
        self.status = status
        self.stored = stored
        self.age: float | None = None
        self.own: CachedResponse | None = None
        self.variant = answer.variant

    def selects(self, request: FetchRequest) -> bool:
        """
        Return whether the answer may be shared with ``request``, a
        waiter's: it is storable and, as a variant, the one the waiter's
        header values select (SPEC.md section 3, request coalescing).
        """
        v = self.variant
        return self.storable and (v is None or matches(v, request.values_of, request.encoding))

    def result(self, collapsed: bool, now: float) -> CacheResult:
        """
        Return the answer for one caller; ``collapsed`` when it waited for
        another caller's fetch.
        """
        age = current_age(self.answer.stored_at, now) if self.cache == REVALIDATED else self.age
        answer = self.answer if collapsed or self.own is None else self.own
        return CacheResult(self.cache, answer, age, status_member(collapsed=collapsed, **self.status), self.stored)


class TenantCache:
    """
    One tenant's cache for one route type.
    """

    log = Logger()

    def __init__(
        self,
        tenant: str,
        route: RouteConfig,
        store: IStore,
        upstream: IUpstream,
        clock: IReactorTime,
        keyed_headers: Sequence[str],
        flights: Flights[Outcome] | None = None,
        counters: dict[str, int] | None = None,
        varying: frozenset[bytes] = DEFAULT_VARYING,
        hidden: frozenset[bytes] = frozenset(),
        watermark: Watermark | None = None,
        tags_header: str = "",
        targets: Sequence[str] = DEFAULT_TARGETS,
    ) -> None:
        """
        @param watermark: the event watermark, for routes with
            ``max_staleness``; without one they are judged by fetch time.
        @param targets: ``upstream.targeted_cache_control`` (RFC 9213),
            obeyed on routes with ``freshness = "upstream"``.
        """
        self.tenant = tenant
        self.route = route
        self._store = store
        self._upstream = upstream
        self._clock = clock
        self._keyed = frozenset(keyed_headers)
        self._varying = varying
        self._hidden = hidden
        self._flights: Flights[Outcome] = Flights() if flights is None else flights
        self._refreshing: set[CacheKey] = set()
        self.counters = counters if counters is not None else {}
        self._watermark = watermark
        self._max_staleness = route.max_staleness
        self._tags_header = tags_header.lower().encode("ascii")
        self._targets = tuple(targets)

    @property
    def idle(self) -> bool:
        """
        Whether no fetch of this cache is running.
        """
        return not self._refreshing and not self._flights.busy(self.tenant, self.route.type)

    def hit(self, key: CacheKey, headers: Headers | None = None, encoding: bytes = b"identity") -> CacheResult | None:
        """
        Return a L{CacheResult} for a fresh entry held in this process, or
        ``None`` (then call L{get}).  Synchronous and free of side effects
        but the store's recency: the fast hit path.

        @param headers: the caller's request headers, read only when the key
            holds variants (RFC 9111 section 4.1): a key whose answer serves
            every request computes no selector.
        @param encoding: the caller's normalised C{Accept-Encoding}.
        """
        entry = self._store.lookup(key)
        if entry is None:
            variants = self._store.variants(key)
            if not variants:
                return None
            found = self._pick(key, variants, _no_values if headers is None else headers.getRawHeaders, encoding)
            if found is None:
                return None
            key, entry = found
        now = self._clock.seconds()
        if self._max_staleness and not self._vouched(key, entry, now):
            return None
        return self._fresh(entry, now)

    def _pick(
        self, key: CacheKey, variants: Variants, values_of: ValuesOf, encoding: bytes
    ) -> tuple[CacheKey, CachedResponse] | None:
        """
        Return the variant of ``key`` held in this process that a request
        with ``values_of`` and ``encoding`` is served, with its key, or
        ``None`` when none matches.
        """
        index = pick_variant(variants, values_of, encoding)
        if index is None:
            return None
        vkey = variant_key(key, variants[index].selector)
        entry = self._store.lookup(vkey)
        if entry is None:
            return None
        if index:
            self._store.touch_variant(key, index)
        return vkey, entry

    def _vouched(self, key: CacheKey, entry: CachedResponse, now: float) -> bool:
        """
        Bounded staleness (SPEC.md section 5), before every other serving
        rule: return whether ``entry`` may be served from the cache at all.
        Each key's bound is shortened by up to L{STALENESS_SPREAD}, so that
        the entries an outage leaves behind are fetched again spread out.
        """
        bound = self._max_staleness
        if bound <= 0:
            return True
        w = self._watermark
        until = entry.sent_at if w is None else w.vouched(entry.sent_at)
        spread = (hash(key) & 0xFFFF) / 0x10000 * STALENESS_SPREAD
        return within_staleness(until, bound * (1.0 - spread), now)

    def _behind(self, key: CacheKey) -> None:
        self.counters["events_behind"] = self.counters.get("events_behind", 0) + 1
        self.log.debug("past max_staleness: {route} fetched again", route=self.route.type)

    @staticmethod
    def _fresh(entry: CachedResponse, now: float) -> CacheResult | None:
        """
        The freshness decision, for L{hit} and the miss path alike: return
        a C{HIT} for ``entry`` if it is fresh at ``now`` and may be used
        without revalidation, else ``None``.
        """
        if not entry.no_cache and is_fresh(entry.expires_at, entry.stale, now):
            return CacheResult(HIT, entry, current_age(entry.stored_at, now))
        return None

    def cached(
        self, key: CacheKey, headers: Headers | None = None, encoding: bytes = b"identity"
    ) -> CacheResult | Deferred[CacheResult | None] | None:
        """
        Answer a request with ``Cache-Control: only-if-cached`` (RFC 9111
        section 5.2.1.7, SPEC.md section 3, v3) from what is stored, never
        from the upstream: a fresh entry (C{HIT}), or one that may be served
        stale now (C{STALE}, no revalidation started); ``None`` when
        nothing usable is stored (the caller answers 504 ``not_cached``),
        or a Deferred firing with either once a shared store is read.  Of
        a key that holds variants, the one the caller's ``headers`` and
        ``encoding`` select (RFC 9111 section 4.1).
        """
        now = self._clock.seconds()
        values_of = _no_values if headers is None else headers.getRawHeaders
        entry = self._store.lookup(key)
        if entry is None:
            variants = self._store.variants(key)
            picked = self._pick(key, variants, values_of, encoding) if variants else None
            if picked is not None:
                key, entry = picked
        found = self._usable(key, entry, now)
        if found is not None or not self._store.shared:
            return found
        return Deferred.fromCoroutine(self._cached_shared(key, values_of, encoding))

    async def _cached_shared(self, key: CacheKey, values_of: ValuesOf, encoding: bytes) -> CacheResult | None:
        try:
            found = await self._store.load(key, self.route.max_variants)
            if isinstance(found, tuple):
                index = pick_variant(found, values_of, encoding)
                if index is None:
                    return None
                key = variant_key(key, found[index].selector)
                found = await self._store.load(key, self.route.max_variants)
        except StoreUnavailable:
            return None
        if isinstance(found, tuple):
            return None
        return self._usable(key, found, self._clock.seconds())

    def _usable(self, key: CacheKey, entry: CachedResponse | None, now: float) -> CacheResult | None:
        if entry is None or not self._vouched(key, entry, now):
            return None
        found = self._fresh(entry, now)
        if found is not None or entry.no_cache:
            return found
        window = max(entry.stale_until, entry.swr_until) if entry.stale else entry.swr_until
        if now < window:
            return CacheResult(STALE, entry, current_age(entry.stored_at, now))
        return None

    def get(self, key: CacheKey, request: FetchRequest) -> CacheResult | Deferred[CacheResult]:
        """
        Answer ``request`` for ``key``: a L{CacheResult} at once for a hit
        (fresh, or stale while a revalidation runs), else a Deferred firing
        with one.  The Deferred errbacks with an L{UpstreamError} when there
        is no answer and no stale entry to serve instead.

        When ``key`` holds variants, the one ``request`` selects is served
        (RFC 9111 section 4.1); when none matches, a C{vary-miss} fetches.
        """
        now = self._clock.seconds()
        entry = self._store.lookup(key)
        # the key fetches and stores go by: the request's key, or the key
        # of the variant it selects (or would: a vary-miss)
        fkey = key
        vary_miss = False
        if entry is None:
            variants = self._store.variants(key)
            if variants:
                found = self._pick(key, variants, request.values_of, request.encoding)
                if found is None:
                    fkey, vary_miss = self._unmatched(key, variants, request), True
                else:
                    fkey, entry = found
        if entry is not None:
            if self._vouched(fkey, entry, now):
                served = self._serve(fkey, request, entry, now)
                if served is not None:
                    return served
            else:
                # nothing of it is served, not even stale: it is only
                # revalidated (its validators) or fetched again
                self._behind(fkey)
        return Deferred.fromCoroutine(self._miss(key, fkey, vary_miss, request, entry, now))

    @staticmethod
    def _unmatched(key: CacheKey, variants: Variants, request: FetchRequest) -> CacheKey:
        """
        Return the key that a request matching none of ``key``'s variants
        fetches by: the variant it would be, if its answer varies as the
        most recently used variant does (so that concurrent requests with
        the same values share one fetch, and others don't wait for it).
        """
        return variant_key(key, selector(variants[0].vary, request.values_of, request.encoding))

    def _serve(
        self, key: CacheKey, request: FetchRequest, entry: CachedResponse, now: float
    ) -> CacheResult | None:
        found = self._fresh(entry, now)
        if found is not None:
            return found
        if entry.stale:
            # marked by a refresh event (SPEC.md section 5)
            window = max(entry.stale_until, entry.swr_until)
        elif entry.no_cache:
            window = 0.0
        else:
            window = entry.swr_until
        if now < window:
            self._revalidate(key, request, entry, now)
            return CacheResult(STALE, entry, current_age(entry.stored_at, now))
        return None

    async def _miss(
        self,
        key: CacheKey,
        fkey: CacheKey,
        vary_miss: bool,
        request: FetchRequest,
        stale: CachedResponse | None,
        now: float,
    ) -> CacheResult:
        """
        Answer what the local tier could not: from a shared store, else by
        a fetch for ``fkey`` (``key``'s, or the variant's ``request``
        selects) shared with concurrent callers whose values select the
        same answer.
        """
        bypass = False
        if self._store.shared:
            try:
                found = await self._store.load(key, self.route.max_variants)
                fkey, vary_miss = key, False
                if isinstance(found, tuple):
                    # the key holds variants: load the one the request selects
                    index = pick_variant(found, request.values_of, request.encoding)
                    if index is None:
                        fkey, vary_miss = self._unmatched(key, found, request), True
                    else:
                        fkey = variant_key(key, found[index].selector)
                    found = await self._store.load(fkey, self.route.max_variants)
                    # another instance may have stored that one since
                    vary_miss = vary_miss and found is None
                    if isinstance(found, tuple):
                        found = None
            except StoreUnavailable:
                bypass = True
            else:
                if found is not None:
                    now = self._clock.seconds()
                    if self._vouched(fkey, found, now):
                        served = self._serve(fkey, request, found, now)
                        if served is not None:
                            return served
                    elif stale is None:
                        self._behind(fkey)
                    stale = found
        fwd = "vary-miss" if vary_miss and stale is None else None
        flight = self._flights.by_key.get(fkey)
        if flight is not None and not self._flights.joinable(fkey, flight):
            flight = None
        leader = flight is None
        if flight is None:
            flight = self._launch(fkey, request, bypass, stale, fwd)
        else:
            self.counters["coalesced"] = self.counters.get("coalesced", 0) + 1
        collapsed = not leader
        try:
            outcome = await flight.wait()
            if not (leader or outcome.selects(request)):
                # the leader's answer was for its own headers: fetch with ours
                collapsed = False
                if outcome.storable and stale is None:
                    # it is a variant ours does not match
                    fwd = "vary-miss"
                outcome = await self._fetch(fkey, request, outcome.bypass, stale, fwd)
        except UpstreamError:
            served = self._stale_if_error(fkey, stale)
            if served is None:
                raise
            return served
        if outcome.answer.status >= 500:
            served = self._stale_if_error(fkey, stale)
            if served is not None:
                return served
        return outcome.result(collapsed, self._clock.seconds())

    def _stale_if_error(self, key: CacheKey, stale: CachedResponse | None) -> CacheResult | None:
        now = self._clock.seconds()
        # past max_staleness (perhaps while the fetch ran) nothing stale is
        # served; nor an answer to revalidate before every use, whatever
        # stale_if_error says (RFC 9111 section 5.2.2.4)
        if stale is not None and not stale.no_cache and now < stale.stale_until and self._vouched(key, stale, now):
            return CacheResult(
                STALE,
                stale,
                current_age(stale.stored_at, now),
                status_member(fwd="stale", detail="stale-if-error"),
                stored=True,
            )
        return None

    def _launch(
        self, key: CacheKey, request: FetchRequest, bypass: bool, stale: CachedResponse | None, fwd: str | None = None
    ) -> Flight[Outcome]:
        flight: Flight[Outcome] = Flight(self._flights.tag_purges)
        self._flights.add(key, flight)
        d = Deferred.fromCoroutine(self._fetch(key, request, bypass, stale, fwd))

        def settle(result: Outcome | Failure) -> None:
            self._flights.remove(key, flight)
            flight.settle(result)

        d.addBoth(settle)
        return flight

    def _conditions(self, stale: CachedResponse | None, now: float) -> list[tuple[bytes, bytes]]:
        """
        Return the validators to send for a stale entry still kept for
        revalidation (RFC 9111 section 4.3.1), or none.
        """
        if stale is None or now >= stale.keep_until:
            return []
        return validators(stale.headers)

    async def _fetch(
        self,
        key: CacheKey,
        request: FetchRequest,
        bypass: bool,
        stale: CachedResponse | None,
        fwd: str | None = None,
    ) -> Outcome:
        """
        Fetch ``request`` for ``key`` (a request's key or a variant's), and
        store the answer if it may be.

        @param fwd: the C{Cache-Status} C{fwd} when not the usual
            (C{vary-miss}: the key holds variants, none of them the
            request's).
        """
        token: Any = None
        if not bypass:
            try:
                token = await self._store.begin(key)
            except StoreUnavailable:
                bypass = True
        try:
            sent = self._clock.seconds()
            conditions = self._conditions(stale, sent)
            response = await self._ask(request, conditions)
            if response.status == 304 and stale is not None:
                outcome = await self._not_modified(key, stale, response, sent, token, bypass)
                if outcome is not None:
                    return outcome
                # RFC 9111 section 4.3.3: it matches nothing: ask again, unconditionally
                sent = self._clock.seconds()
                response = await self._ask(request, [])
        except BaseException:
            if not bypass:
                self._store.release(key, token)
            raise
        return await self._complete(key, request, response, sent, token, bypass, stale, fwd)

    async def _ask(self, request: FetchRequest, conditions: list[tuple[bytes, bytes]]) -> UpstreamResponse:
        """
        Fetch ``request`` with ``conditions`` added.  A 304 to a request
        without validators is no answer (SPEC.md section 4: 502).
        """
        self.counters["fetches"] = self.counters.get("fetches", 0) + 1
        headers = with_validators(request.headers, conditions)
        response = await self._upstream.fetch(request.path, headers, tenant=self.tenant)
        if response.status == 304 and not conditions:
            error = UpstreamUnreachable("the upstream answered 304 to a request without validators")
            error.detail, error.status = "bad-response", 304
            raise error
        return response

    async def _not_modified(
        self,
        key: CacheKey,
        stale: CachedResponse,
        response: UpstreamResponse,
        sent: float,
        token: Any,
        bypass: bool,
    ) -> Outcome | None:
        """
        Apply a 304 to the stale entry it answers (RFC 9111 section 4.3.4):
        an outcome C{REVALIDATED}, or ``None`` when its validators match
        nothing stored.
        """
        if not revalidation_matches(stale.headers, response.headers):
            return None
        now = self._clock.seconds()
        headers = updated_headers(
            stale.headers, response.headers, replayed_headers(response.headers, self._hidden, date_header(now))
        )
        answer = self._entry(
            stale.status, headers, stale.body, sent, now, upstream_age(response.headers), stale.tags, stale.variant
        )
        if b"no-store" in cache_control(response.headers):
            self.log.debug("a 304 with no-store drops the entry")
            if not bypass:
                self._store.release(key, token)
                await self._discard(key)
            return Outcome(REVALIDATED, answer, False, bypass, {"fwd": "stale", "fwd_status": 304, "detail": "no-store"})
        stored = False
        if not bypass:
            stored = await self._put(key, answer, token)
        args: dict[str, Any] = {"fwd": "stale", "fwd_status": 304}
        if not self._vouched(key, stale, now):
            args["detail"] = EVENTS_BEHIND
        return Outcome(REVALIDATED, answer, True, bypass, args, stored=stored)

    async def _complete(
        self,
        key: CacheKey,
        request: FetchRequest,
        response: UpstreamResponse,
        sent: float,
        token: Any,
        bypass: bool,
        stale: CachedResponse | None,
        fwd: str | None = None,
    ) -> Outcome:
        """
        Store a complete upstream answer if it may be, and return it.  An
        answer whose C{Vary} names request fields, or that is content-coded,
        is stored as a variant of its key, told apart by ``request``'s
        values for them (RFC 9111 section 4.1); C{Vary: *} is not stored.
        """
        now = self._clock.seconds()
        # (v3) a Vary naming any field is stored, one variant per value:
        # only "*" makes an answer unstorable
        reason = not_stored_reason(
            response.status,
            response.headers,
            (),
            encoding=request.encoding,
            route=self.route,
            targets=self._targets,
        )
        tags: tuple[str, ...] = ()
        variant: Variant | None = None
        if reason is None:
            tags, taggable = self._tags(key, response)
            if not taggable:
                reason = "tags"
            else:
                variant = self._variant(request, response, now)
        directives, _ = governing_directives(response.headers, self.route, self._targets)
        date = date_header(now)
        # an answer not stored is passed on whole: Set-Cookie and the
        # fields a qualified no-cache names included (SPEC.md section 3, v3)
        passed = reason is not None
        headers = replayed_headers(response.headers, self._hidden, date, passed, directives)
        age = upstream_age(response.headers)
        answer = self._entry(response.status, headers, response.body, sent, now, age, tags, variant)
        own = None
        if not passed and withheld_fields(response.headers, directives):
            # the stored copy leaves them out; this caller's answer has them
            own_headers = replayed_headers(response.headers, self._hidden, date, True, directives)
            own = _with_headers(answer, own_headers)
        # a 5xx while a stale entry may be served instead replaces nothing
        keep_stale = response.status >= 500 and self._stale_if_error(key, stale) is not None
        stored = False
        if bypass:
            pass
        elif reason is None and not keep_stale:
            stored = await self._put(key, answer, token)
            if not stored and answer.size() > getattr(self._store, "max_entry_bytes", answer.size()):
                reason = "too-large"
        else:
            # nothing to share: other instances waiting for it fetch now
            self._store.release(key, token)
            if stale is not None and (200 <= response.status < 300 or response.status in NEGATIVE):
                # the upstream's answer supersedes what is stored
                await self._discard(key)
        if reason is not None:
            self.log.debug(
                "not stored ({detail}): {route} answered {status}",
                detail=reason,
                route=self.route.type,
                status=response.status,
            )
        if bypass:
            args: dict[str, Any] = {"fwd": "miss", "detail": "store-unavailable"}
        else:
            args = {
                "fwd": (fwd or "uri-miss") if stale is None else "stale",
                "fwd_status": response.status,
                "stored": stored,
                "detail": reason if reason is not None or stale is None or self._vouched(key, stale, now) else EVENTS_BEHIND,
            }
        outcome = Outcome(BYPASS if bypass else MISS, answer, reason is None, bypass, args, stored=stored)
        outcome.own = own
        # SPEC.md section 3: a MISS passes a non-zero upstream Age on
        outcome.age = age or None
        return outcome

    @staticmethod
    def _variant(request: FetchRequest, response: UpstreamResponse, now: float) -> Variant | None:
        """
        Return what tells a storable answer apart from its key's other
        variants: the fields its C{Vary} names (and C{accept-encoding} for
        a content-coded one) with the fetching request's values; C{None}
        when it serves every request of its key.  Dated by its C{Date}.
        """
        date = http_date(header(response.headers, b"date"))
        found = answer_variant(response.headers, request.values_of, request.encoding, now if date is None else date)
        if found is None or not found.vary:
            return None
        # the variants of a route mostly vary on the same names: one tuple
        # of them for all (memory per variant)
        shared = _VARIES.get(found.vary)
        if shared is None:
            if len(_VARIES) >= _VARIES_KEPT:
                _VARIES.clear()
            shared = _VARIES[found.vary] = found.vary
        return found._replace(vary=shared)

    async def _put(self, key: CacheKey, answer: CachedResponse, token: Any) -> bool:
        try:
            return await self._store.put(key, answer, token, self.route.max_variants)
        except StoreUnavailable as e:
            self.counters["store_errors"] = self.counters.get("store_errors", 0) + 1
            self.log.warn("could not store an answer: {error}", error=str(e))
            return False

    def _tags(self, key: CacheKey, response: UpstreamResponse) -> tuple[tuple[str, ...], bool]:
        """
        Return the tags of a storable answer for ``key`` and whether it stays
        storable: not with too many tags or one too long (``detail=tags``).
        """
        try:
            return answer_tags(self.route, key.params, response.headers, self._tags_header), True
        except TooManyTags as e:
            self.counters["tags_refused"] = self.counters.get("tags_refused", 0) + 1
            self.log.debug("answer not stored (detail=tags): {why}", why=str(e), route=self.route.type)
            return (), False

    async def _discard(self, key: CacheKey) -> None:
        try:
            await self._store.discard(key)
        except StoreUnavailable:
            pass

    def _entry(
        self,
        status: int,
        headers: tuple[tuple[bytes, bytes], ...],
        body: bytes,
        sent: float,
        now: float,
        age: int | None,
        tags: tuple[str, ...] = (),
        variant: Variant | None = None,
    ) -> CachedResponse:
        """
        Return the entry for an answer asked for at ``sent`` and received at
        ``now`` with the upstream's ``age`` (``None``: none or invalid): its
        age counts from its corrected initial age (RFC 9111 section 4.2.3),
        its windows from its freshness; it carries ``tags``.
        """
        f = freshness(self.route, status, headers, sent, now, age, self._targets)
        # one float object less per entry when the answer came with no age
        born = now - f.initial_age if f.initial_age else now
        shared, head = shared_wire(headers)
        expires = born + f.lifetime
        stale_until = expires + f.stale_if_error if f.stale_if_error else expires
        swr_until = expires + f.stale_while_revalidate if f.stale_while_revalidate else expires
        keep_until = max(stale_until, swr_until)
        if self.route.keep and validators(headers):
            keep_until = max(keep_until, expires + self.route.keep)
        # a variant is the same entry with its selector (CachedVariant), so
        # that a plain entry pays nothing for variants
        extra: dict[str, Any] = {} if variant is None else {"variant": variant}
        return (CachedResponse if variant is None else CachedVariant)(
            status,
            shared,
            body,
            stored_at=born,
            expires_at=expires,
            stale_until=stale_until,
            head=head,
            swr_until=swr_until,
            keep_until=keep_until,
            no_cache=f.no_cache,
            sent_at=sent,
            tags=tags,
            **extra,
        )

    def _revalidate(self, key: CacheKey, request: FetchRequest, entry: CachedResponse, now: float) -> None:
        """
        Start one background revalidation of a stale entry, unless one runs
        or the last one failed less than a second ago.
        """
        if key in self._refreshing or now < entry.retry_at:
            return
        entry.retry_at = now + REFRESH_RETRY_SECONDS
        self._refreshing.add(key)
        d = Deferred.fromCoroutine(self._refresh(key, request, entry))

        def failed(f: Failure) -> None:
            self.log.failure("background refresh failed", f)

        def done(_: object) -> None:
            self._refreshing.discard(key)

        d.addErrback(failed).addBoth(done)

    def _retry_later(self, key: CacheKey) -> None:
        # counted from the failure, not from the start of a slow re-fetch
        entry = self._store.lookup(key)
        if entry is not None:
            entry.retry_at = max(entry.retry_at, self._clock.seconds() + REFRESH_RETRY_SECONDS)

    async def _refresh(self, key: CacheKey, request: FetchRequest, entry: CachedResponse) -> None:
        """
        Revalidate or re-fetch a stale entry in the background (SPEC.md
        section 3, stale while revalidate): a 304 that matches or a 2xx
        replaces it, a 404/410 drops it (or replaces it when negative
        answers are stored), anything else leaves it stale.
        """
        token: Any = _NO_TOKEN
        try:
            token = await self._store.begin(key)
            sent = self._clock.seconds()
            conditions = self._conditions(entry, sent)
            response = await self._ask(request, conditions)
            if response.status == 304:
                outcome = await self._not_modified(key, entry, response, sent, token, False)
                if outcome is not None:
                    return
                sent = self._clock.seconds()
                response = await self._ask(request, [])
        except (UpstreamError, StoreUnavailable) as e:
            # left stale; a later request retries after REFRESH_RETRY_SECONDS
            self.log.info("refresh of a stale entry failed: {error}", error=str(e))
            if token is not _NO_TOKEN:
                self._store.release(key, token)
            self._retry_later(key)
            return
        status = response.status
        if not (200 <= status < 300 or status in NEGATIVE):
            self.log.info("refresh of a stale entry got {status}", status=status)
            self._store.release(key, token)
            self._retry_later(key)
            return
        await self._complete(key, request, response, sent, token, False, entry)


def _with_headers(entry: CachedResponse, headers: tuple[tuple[bytes, bytes], ...]) -> CachedResponse:
    """
    Return ``entry`` with other replayed headers (and their wire form),
    for an answer passed on rather than stored.
    """
    return CachedResponse(
        entry.status,
        headers,
        entry.body,
        stored_at=entry.stored_at,
        expires_at=entry.expires_at,
        stale_until=entry.stale_until,
        head=header_block(headers),
        swr_until=entry.swr_until,
        keep_until=entry.keep_until,
        no_cache=entry.no_cache,
        sent_at=entry.sent_at,
        tags=entry.tags,
    )


def _no_values(name: bytes) -> None:
    """
    The L{ValuesOf} of a request without headers.
    """
    return None
