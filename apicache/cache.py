"""
The cache core: one :class:`TenantCache` per (tenant, route type), created on
first use by the :class:`CacheRegistry` (the seed's process registry).

A hit is answered synchronously; a miss returns a Deferred.  Concurrent
misses for one key share one upstream fetch (coalescing), and an
invalidation that arrives while a fetch is in flight wins (the race rule):
the fetch's answer reaches the callers already waiting but is not stored,
and a request after the invalidation starts a new fetch.

What may be stored, which headers are kept, how long an answer is fresh
and how a 304 updates it are decided by the pure functions of
L{apicache.httpcache}; this module applies them: revalidation with the
stored validators, stale-while-revalidate, negative caching.

This module imports neither Klein nor the HTTP layer nor the event listener:
they call into it.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from apicache.config import RouteConfig, UpstreamConfig
from apicache.httpcache import (
    NEGATIVE,
    cache_control,
    current_age,
    date_header,
    freshness,
    header_block,
    hidden_headers,
    is_fresh,
    not_stored_reason,
    replayed_headers,
    revalidation_matches,
    status_member,
    updated_headers,
    upstream_age,
    validators,
    varying_headers,
    within_staleness,
)
from apicache.invalidator import IInvalidator
from apicache.keys import CacheKey
from apicache.metrics import LatencyHistogram
from apicache.store.interface import CachedResponse, IStore, StoreUnavailable
from apicache.tags import TooManyTags, answer_tags
from apicache.upstream import IUpstream, UpstreamError, UpstreamResponse, UpstreamUnreachable
from apicache.watermark import Watermark

__all__ = [
    "HIT",
    "MISS",
    "STALE",
    "BYPASS",
    "REVALIDATED",
    "CacheResult",
    "FetchRequest",
    "TenantCache",
    "CacheRegistry",
]

HIT = "HIT"
MISS = "MISS"
STALE = "STALE"
BYPASS = "BYPASS"
REVALIDATED = "REVALIDATED"
#: The request headers whose Vary makes an answer unstorable by default.
DEFAULT_VARYING = varying_headers(UpstreamConfig())

#: Share of a route's ``max_staleness`` by which an entry's own bound may be
#: shorter (fixed per key): entries fetched before an outage cross their
#: bounds spread over this share instead of at one instant.
STALENESS_SPREAD = 0.2
#: ``Cache-Status`` detail of an entry held past its route's max_staleness.
EVENTS_BEHIND = "events-behind"

#: A failed background re-fetch is retried no sooner than this.
REFRESH_RETRY_SECONDS = 1.0
#: Buckets of the entries-per-tag-purge histogram.
TAG_PURGE_BUCKETS = (0, 1, 10, 100, 1000, 10000, 100000)
#: No store token taken yet.
_NO_TOKEN = object()


class FetchRequest:
    """
    What to ask the upstream for on a caller's behalf: the encoded path and
    query under ``base_url``, the caller's forwarded headers (the
    normalised ``accept-encoding`` among them) and that encoding.
    """

    __slots__ = ("path", "headers", "encoding")

    def __init__(self, path: str, headers: Sequence[tuple[bytes, bytes]], encoding: bytes = b"identity") -> None:
        self.path = path
        self.headers = headers
        self.encoding = encoding


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


#: Replayed headers seen lately, with their wire form: answers with the same
#: headers (most hold a Content-Type and the same second's Date) share one
#: tuple and one block (memory per entry).  Cleared when full, so that
#: sharing goes on as Dates move.
_WIRE: dict[tuple[tuple[bytes, bytes], ...], tuple[tuple[tuple[bytes, bytes], ...], bytes]] = {}
_WIRE_MAX = 4096


def _shared_wire(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
    """
    Return ``headers`` and their L{header_block}, shared with earlier answers
    that had the same headers.
    """
    found = _WIRE.get(headers)
    if found is None:
        if len(_WIRE) >= _WIRE_MAX:
            _WIRE.clear()
        found = _WIRE[headers] = (headers, header_block(headers))
    return found


class _Outcome:
    """
    The result of one upstream fetch, as shared with its waiters.

    @ivar storable: the answer may be shared with callers of other headers.
    @ivar status: the arguments of its L{status_member}.
    """

    __slots__ = ("cache", "answer", "storable", "bypass", "status", "stored", "age")

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

    def result(self, collapsed: bool, now: float) -> CacheResult:
        """
        Return the answer for one caller; ``collapsed`` when it waited for
        another caller's fetch.
        """
        age = current_age(self.answer.stored_at, now) if self.cache == REVALIDATED else self.age
        return CacheResult(
            self.cache, self.answer, age, status_member(collapsed=collapsed, **self.status), self.stored
        )


class _Flight:
    """
    One upstream fetch in flight and the callers waiting for it.  Callers
    wait on Deferreds of their own, so cancelling one (a disconnect) never
    cancels the fetch.
    """

    __slots__ = ("waiters", "result", "launched")

    def __init__(self, launched: int = 0) -> None:
        self.waiters: list[Deferred[_Outcome]] = []
        self.result: _Outcome | Failure | None = None
        #: L{_Flights.tag_purges} when it started
        self.launched = launched

    def wait(self) -> Deferred[_Outcome]:
        # a fetch can end synchronously (Overloaded, a synchronous store):
        # a caller arriving after that still gets its result
        if self.result is not None:
            return fail(self.result) if isinstance(self.result, Failure) else succeed(self.result)
        d: Deferred[_Outcome] = Deferred(self.waiters.remove)
        self.waiters.append(d)
        return d

    def settle(self, result: _Outcome | Failure) -> None:
        self.result = result
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class _Flights:
    """
    The coalescing table, shared by every tenant cache, indexed by resource
    so that an invalidation finds the fetches it must detach.
    """

    def __init__(self) -> None:
        self.by_key: dict[CacheKey, _Flight] = {}
        self._by_resource: dict[tuple[str, tuple[str, ...]], set[CacheKey]] = {}
        #: (tenant, route) -> fetches in flight, for L{busy}
        self._per_cache: dict[tuple[str, str], int] = {}
        #: tag purges so far, and the count at each tenant's (None: every
        #: tenant's) latest one: a fetch started before a tag purge of its
        #: tenant may carry that tag, so nobody arriving after joins it
        self.tag_purges = 0
        self._tag_purged_at: dict[str | None, int] = {}

    def add(self, key: CacheKey, flight: _Flight) -> None:
        if key not in self.by_key:
            owner = (key.tenant, key.route)
            self._per_cache[owner] = self._per_cache.get(owner, 0) + 1
        self.by_key[key] = flight
        self._by_resource.setdefault((key.route, key.params), set()).add(key)

    def remove(self, key: CacheKey, flight: _Flight) -> None:
        if self.by_key.get(key) is flight:
            self._drop(key)

    def _drop(self, key: CacheKey) -> None:
        del self.by_key[key]
        owner = (key.tenant, key.route)
        left = self._per_cache[owner] - 1
        if left:
            self._per_cache[owner] = left
        else:
            del self._per_cache[owner]
        keys = self._by_resource[(key.route, key.params)]
        keys.discard(key)
        if not keys:
            del self._by_resource[(key.route, key.params)]

    def detach(self, tenant: str | None, route: str, params: tuple[str, ...]) -> None:
        """
        Forget the fetches for a resource: later callers start new ones.
        """
        for key in list(self._by_resource.get((route, params), ())):
            if tenant is None or key.tenant == tenant:
                self._drop(key)

    def detach_tenant(self, tenant: str | None) -> None:
        """
        Forget every fetch (of ``tenant``).
        """
        for key in list(self.by_key):
            if tenant is None or key.tenant == tenant:
                self._drop(key)

    def tag_purged(self, tenant: str | None) -> None:
        """
        Note a tag purge of ``tenant`` (or every tenant): fetches running now
        are joined by nobody else (which tags they carry is known only once
        they are answered; the store refuses to keep the purged ones).
        """
        self.tag_purges += 1
        self._tag_purged_at[tenant] = self.tag_purges
        if len(self._tag_purged_at) > 65536:
            # forgetting tenants' marks: fold them into the every-tenant one
            self._tag_purged_at = {None: self.tag_purges}

    def joinable(self, key: CacheKey, flight: _Flight) -> bool:
        """
        Return whether a caller arriving now may wait for ``flight``: no tag
        purge of its tenant came after it started.
        """
        if not self._tag_purged_at:
            return True
        at = self._tag_purged_at
        return flight.launched >= at.get(key.tenant, 0) and flight.launched >= at.get(None, 0)

    def busy(self, tenant: str, route: str) -> bool:
        """
        Return whether (``tenant``, ``route``) has a fetch in flight.
        """
        return (tenant, route) in self._per_cache


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
        flights: _Flights | None = None,
        counters: dict[str, int] | None = None,
        varying: frozenset[bytes] = DEFAULT_VARYING,
        hidden: frozenset[bytes] = frozenset(),
        watermark: Watermark | None = None,
        tags_header: str = "",
    ) -> None:
        """
        @param watermark: the event watermark, for routes with
            ``max_staleness``; without one they are judged by fetch time.
        """
        self.tenant = tenant
        self.route = route
        self._store = store
        self._upstream = upstream
        self._clock = clock
        self._keyed = frozenset(keyed_headers)
        self._varying = varying
        self._hidden = hidden
        self._flights = _Flights() if flights is None else flights
        self._refreshing: set[CacheKey] = set()
        self.counters = counters if counters is not None else {}
        self._watermark = watermark
        self._max_staleness = route.max_staleness
        self._tags_header = tags_header.lower().encode("ascii")

    @property
    def idle(self) -> bool:
        """
        Whether no fetch of this cache is running.
        """
        return not self._refreshing and not self._flights.busy(self.tenant, self.route.type)

    def hit(self, key: CacheKey) -> CacheResult | None:
        """
        Return a L{CacheResult} for a fresh entry held in this process, or
        ``None`` (then call L{get}).  Synchronous and free of side effects
        but the store's recency: the fast hit path.
        """
        entry = self._store.lookup(key)
        if entry is None:
            return None
        now = self._clock.seconds()
        if self._max_staleness and not self._vouched(key, entry, now):
            return None
        return self._fresh(entry, now)

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

    def get(self, key: CacheKey, request: FetchRequest) -> CacheResult | Deferred[CacheResult]:
        """
        Answer ``request`` for ``key``: a L{CacheResult} at once for a hit
        (fresh, or stale while a revalidation runs), else a Deferred firing
        with one.  The Deferred errbacks with an L{UpstreamError} when there
        is no answer and no stale entry to serve instead.
        """
        now = self._clock.seconds()
        entry = self._store.lookup(key)
        if entry is not None:
            if self._vouched(key, entry, now):
                found = self._serve(key, request, entry, now)
                if found is not None:
                    return found
            else:
                # nothing of it is served, not even stale: it is only
                # revalidated (its validators) or fetched again
                self._behind(key)
        return Deferred.fromCoroutine(self._miss(key, request, entry, now))

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
        self, key: CacheKey, request: FetchRequest, stale: CachedResponse | None, now: float
    ) -> CacheResult:
        bypass = False
        if self._store.shared:
            try:
                entry = await self._store.load(key)
            except StoreUnavailable:
                bypass = True
            else:
                if entry is not None:
                    now = self._clock.seconds()
                    if self._vouched(key, entry, now):
                        found = self._serve(key, request, entry, now)
                        if found is not None:
                            return found
                    elif stale is None:
                        self._behind(key)
                    stale = entry
        flight = self._flights.by_key.get(key)
        if flight is not None and not self._flights.joinable(key, flight):
            flight = None
        leader = flight is None
        if flight is None:
            flight = self._launch(key, request, bypass, stale)
        else:
            self.counters["coalesced"] = self.counters.get("coalesced", 0) + 1
        collapsed = not leader
        try:
            outcome = await flight.wait()
            if not (leader or outcome.storable):
                # the leader's answer was for its own headers: fetch with ours
                collapsed = False
                outcome = await self._fetch(key, request, outcome.bypass, stale)
        except UpstreamError:
            served = self._stale_if_error(key, stale)
            if served is None:
                raise
            return served
        if outcome.answer.status >= 500:
            served = self._stale_if_error(key, stale)
            if served is not None:
                return served
        return outcome.result(collapsed, self._clock.seconds())

    def _stale_if_error(self, key: CacheKey, stale: CachedResponse | None) -> CacheResult | None:
        now = self._clock.seconds()
        # past max_staleness (perhaps while the fetch ran) nothing stale is served
        if stale is not None and now < stale.stale_until and self._vouched(key, stale, now):
            return CacheResult(
                STALE,
                stale,
                current_age(stale.stored_at, now),
                status_member(fwd="stale", detail="stale-if-error"),
                stored=True,
            )
        return None

    def _launch(self, key: CacheKey, request: FetchRequest, bypass: bool, stale: CachedResponse | None) -> _Flight:
        flight = _Flight(self._flights.tag_purges)
        self._flights.add(key, flight)
        d = Deferred.fromCoroutine(self._fetch(key, request, bypass, stale))

        def settle(result: _Outcome | Failure) -> None:
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
        self, key: CacheKey, request: FetchRequest, bypass: bool, stale: CachedResponse | None
    ) -> _Outcome:
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
        return await self._complete(key, request, response, sent, token, bypass, stale)

    async def _ask(self, request: FetchRequest, conditions: list[tuple[bytes, bytes]]) -> UpstreamResponse:
        """
        Fetch ``request`` with ``conditions`` added.  A 304 to a request
        without validators is no answer (SPEC.md section 4: 502).
        """
        self.counters["fetches"] = self.counters.get("fetches", 0) + 1
        headers = list(request.headers) + conditions if conditions else request.headers
        response = await self._upstream.fetch(request.path, headers, tenant=self.tenant)
        if response.status == 304 and not conditions:
            raise UpstreamUnreachable("the upstream answered 304 to a request without validators")
        return response

    async def _not_modified(
        self,
        key: CacheKey,
        stale: CachedResponse,
        response: UpstreamResponse,
        sent: float,
        token: Any,
        bypass: bool,
    ) -> _Outcome | None:
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
        answer = self._entry(stale.status, headers, stale.body, sent, now, upstream_age(response.headers), stale.tags)
        if b"no-store" in cache_control(response.headers):
            self.log.debug("a 304 with no-store drops the entry")
            if not bypass:
                self._store.release(key, token)
                await self._discard(key)
            return _Outcome(REVALIDATED, answer, False, bypass, {"fwd": "stale", "fwd_status": 304, "detail": "no-store"})
        stored = False
        if not bypass:
            stored = await self._put(key, answer, token)
        args: dict[str, Any] = {"fwd": "stale", "fwd_status": 304}
        if not self._vouched(key, stale, now):
            args["detail"] = EVENTS_BEHIND
        return _Outcome(REVALIDATED, answer, True, bypass, args, stored=stored)

    async def _complete(
        self,
        key: CacheKey,
        request: FetchRequest,
        response: UpstreamResponse,
        sent: float,
        token: Any,
        bypass: bool,
        stale: CachedResponse | None,
    ) -> _Outcome:
        """
        Store a complete upstream answer if it may be, and return it.
        """
        now = self._clock.seconds()
        reason = not_stored_reason(
            response.status, response.headers, self._varying, self.route.negative_ttl, request.encoding
        )
        tags: tuple[str, ...] = ()
        if reason is None:
            tags, taggable = self._tags(key, response)
            if not taggable:
                reason = "tags"
        headers = replayed_headers(response.headers, self._hidden, date_header(now))
        age = upstream_age(response.headers)
        answer = self._entry(response.status, headers, response.body, sent, now, age, tags)
        stored = False
        if bypass:
            pass
        elif reason is None:
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
                "fwd": "uri-miss" if stale is None else "stale",
                "fwd_status": response.status,
                "stored": stored,
                "detail": reason if reason is not None or stale is None or self._vouched(key, stale, now) else EVENTS_BEHIND,
            }
        outcome = _Outcome(BYPASS if bypass else MISS, answer, reason is None, bypass, args, stored=stored)
        # SPEC.md section 3: a MISS passes a non-zero upstream Age on
        outcome.age = age or None
        return outcome

    async def _put(self, key: CacheKey, answer: CachedResponse, token: Any) -> bool:
        try:
            return await self._store.put(key, answer, token)
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
    ) -> CachedResponse:
        """
        Return the entry for an answer asked for at ``sent`` and received at
        ``now`` with the upstream's ``age`` (``None``: none or invalid): its
        age counts from its corrected initial age (RFC 9111 section 4.2.3),
        its windows from its freshness; it carries ``tags``.
        """
        f = freshness(self.route, status, headers, sent, now, age)
        # one float object less per entry when the answer came with no age
        born = now - f.initial_age if f.initial_age else now
        shared, head = _shared_wire(headers)
        expires = born + f.lifetime
        stale_until = expires + f.stale_if_error if f.stale_if_error else expires
        swr_until = expires + f.stale_while_revalidate if f.stale_while_revalidate else expires
        keep_until = max(stale_until, swr_until)
        if self.route.keep and validators(headers):
            keep_until = max(keep_until, expires + self.route.keep)
        return CachedResponse(
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


@implementer(IInvalidator)
class CacheRegistry:
    """
    Every tenant cache, created on first use, at most ``max_tenants`` at
    once: past that the least recently used idle one is reclaimed (a busy
    one only if none is idle).  Reclaiming frees the object, never the
    tenant's entries: a later request makes a new object over them.

    The HTTP layer and the event listener call :meth:`invalidate`,
    :meth:`refresh`, :meth:`clear`, :meth:`invalidate_tags` and
    :meth:`refresh_tags`.

    @ivar tag_purges: tag purges made, by source (``http``, ``event``,
        ``write``); relayed ones (no source) are counted where they began.
    @ivar tag_dropped: entries dropped (or marked) per tag purge.
    """

    log = Logger()

    def __init__(
        self,
        store: IStore,
        upstream: IUpstream,
        clock: IReactorTime,
        routes: Iterable[RouteConfig],
        keyed_headers: Sequence[str],
        max_tenants: int = 10000,
        upstream_config: UpstreamConfig | None = None,
        watermark: Watermark | None = None,
        tags_header: str | None = None,
    ) -> None:
        """
        @param watermark: the event watermark, for routes with
            ``max_staleness`` (bounded staleness, SPEC.md section 5).
        """
        self.store = store
        self.upstream = upstream
        self._clock = clock
        self.routes = {r.type: r for r in routes}
        self._keyed = tuple(keyed_headers)
        up = upstream_config or UpstreamConfig()
        if tags_header is not None and tags_header != up.tags_header:
            # the tags header is also hidden from callers (hidden_headers)
            up = dataclasses.replace(up, tags_header=tags_header)
        self._varying = varying_headers(up)
        self._hidden = hidden_headers(up)
        self.max_tenants = max_tenants
        self.watermark = watermark
        self.tags_header = up.tags_header
        self.tag_purges: dict[str, int] = {"http": 0, "event": 0, "write": 0}
        self.tag_dropped = LatencyHistogram(TAG_PURGE_BUCKETS)
        self._caches: OrderedDict[tuple[str, str], TenantCache] = OrderedDict()
        self._flights = _Flights()
        # a shared store tells of other instances' tag purges: nobody here
        # joins a fetch that began before one (the race rule across instances)
        listeners = getattr(store, "tag_purge_listeners", None)
        if listeners is not None:
            listeners.append(self._flights.tag_purged)
        #: plain counters, read at scrape time
        self.counters: dict[str, int] = {
            "coalesced": 0,
            "fetches": 0,
            "store_errors": 0,
            "reclaimed": 0,
            "events_behind": 0,
        }

    def cache(self, tenant: str, route_type: str) -> TenantCache:
        """
        Return the cache for (``tenant``, ``route_type``), creating it.

        @raise KeyError: no route has that type.
        """
        k = (tenant, route_type)
        c = self._caches.get(k)
        if c is not None:
            self._caches.move_to_end(k)
            return c
        c = TenantCache(
            tenant,
            self.routes[route_type],
            self.store,
            self.upstream,
            self._clock,
            self._keyed,
            self._flights,
            self.counters,
            self._varying,
            self._hidden,
            watermark=self.watermark,
            tags_header=self.tags_header,
        )
        self._caches[k] = c
        if len(self._caches) > self.max_tenants:
            self._reclaim()
        return c

    def _reclaim(self) -> None:
        victim = next((k for k, c in self._caches.items() if c.idle), None)
        if victim is None:
            victim = next(iter(self._caches))
        # Only the TenantCache object goes: its entries stay in the store
        # (SPEC.md section 2, max_tenants), since anyone with an api-key can
        # name new tenants, and dropping the entries of the one reclaimed
        # would let them empty other tenants' caches.  The store's own
        # budget and fair share bound what the entries hold.
        del self._caches[victim]
        self.counters["reclaimed"] += 1

    def __len__(self) -> int:
        return len(self._caches)

    def tenants(self) -> int:
        """
        Return how many distinct tenants hold a cache now.
        """
        return len({t for t, _ in self._caches})

    def invalidate(self, tenant: str | None, route_type: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Drop every variant of a resource, for ``tenant`` or every tenant.
        Fires with the number of entries dropped; errbacks with
        L{StoreUnavailable}.
        """
        self._flights.detach(tenant, route_type, params)
        return self._call(self.store.invalidate, tenant, route_type, params)

    def refresh(self, tenant: str | None, route_type: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Mark every variant of a resource stale, for ``tenant`` or every
        tenant.  Fires with the number marked; errbacks with
        L{StoreUnavailable}.
        """
        self._flights.detach(tenant, route_type, params)
        return self._call(self.store.mark_stale, tenant, route_type, params)

    def clear(self, tenant: str | None) -> Deferred[int]:
        """
        Drop every entry (of ``tenant``).  Fires with the number dropped;
        errbacks with L{StoreUnavailable}.
        """
        self._flights.detach_tenant(tenant)

        def release(n: int) -> int:
            # their entries are gone: idle caches of those tenants go too
            for k in [k for k, c in self._caches.items() if (tenant is None or k[0] == tenant) and c.idle]:
                del self._caches[k]
            return n

        return self._call(self.store.clear, tenant).addCallback(release)

    def invalidate_tags(self, tenant: str | None, tags: Sequence[str], source: str = "") -> Deferred[int]:
        """
        Drop every entry carrying one of ``tags``, of ``tenant`` or of every
        tenant: at once for every later request, and fetches in flight don't
        store answers carrying them.  The target of the pass-through write
        hook (``source="write"``), of ``DELETE /tags/<tag>`` and of events.
        Fires with the number of entries dropped; errbacks with
        L{StoreUnavailable}.

        @param source: ``http``, ``event`` or ``write``, for metrics; empty
            for a purge relayed from another worker (counted there).
        """
        return self._purge_tags(tenant, tags, False, source)

    def refresh_tags(self, tenant: str | None, tags: Sequence[str], source: str = "") -> Deferred[int]:
        """
        Mark stale every entry carrying one of ``tags``, of ``tenant`` or of
        every tenant (see L{invalidate_tags}).  Fires with the number marked;
        errbacks with L{StoreUnavailable}.
        """
        return self._purge_tags(tenant, tags, True, source)

    def _purge_tags(self, tenant: str | None, tags: Sequence[str], stale: bool, source: str) -> Deferred[int]:
        self._flights.tag_purged(tenant)
        # every tag's purge starts now (each takes effect locally at once),
        # then they are waited for together
        started = [self._call(self.store.purge_tag, tenant, tag, stale) for tag in tags]

        async def total() -> int:
            n = 0
            error: Failure | None = None
            for d in started:
                try:
                    n += await d
                except StoreUnavailable:
                    error = error or Failure()
            if error is not None:
                error.raiseException()
            if source:
                self.tag_purges[source] = self.tag_purges.get(source, 0) + 1
                self.tag_dropped.observe(n)
            return n

        return Deferred.fromCoroutine(total())

    @staticmethod
    def _call(f: Any, *args: Any) -> Deferred[int]:
        try:
            return f(*args)  # type: ignore[no-any-return]
        except StoreUnavailable:
            return fail()
