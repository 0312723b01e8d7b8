"""
The shared store: entries in Redis, with an in-process tier in front.

The key layout is in L{apicache.store.redis.codec}, the scripts (and what
each guarantees) in L{apicache.store.redis.scripts}, the connections in
L{apicache.store.redis.connection}.

The race rule across instances: :meth:`RedisStore.begin` reads the four
generations that cover a key, and the store script writes the entry only if
they are unchanged.  Every invalidation bumps the generation first, in the
same script that deletes, and publishes on ``P:inv`` from inside that script,
so every instance drops its in-process copies.

Calls are bounded by ``timeout``; while the connection is down they fail at
once with :class:`StoreUnavailable` instead of queueing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from apicache.cache.keys import VARIANT_MARK, CacheKey, base_key, variant_key
from apicache.config import StoreConfig
from apicache.store.eviction import current_client
from apicache.store.interface import DEFAULT_MAX_VARIANTS, CachedResponse, IStore, StoreUnavailable, Variants
from apicache.store.memory import MemoryStore
from apicache.store.redis import scripts
from apicache.store.redis.address import parse_redis_url
from apicache.store.redis.codec import (
    decode_entry,
    decode_tag_record,
    decode_variants,
    encode_component,
    encode_entry,
    encode_key,
    encode_tag_record,
    encode_variant_record,
    entry_problem,
    generation_keys,
    lock_key,
    resource_name,
    route_name,
    tag_record_key,
    variants_key,
)
from apicache.store.redis.connection import PubSubProtocol, RedisCommands, RedisConnection
from apicache.store.redis.watermarks import RedisWatermarks

__all__ = ["RedisStore"]

#: Generations must outlive any fetch in flight (upstream.timeout, plus
#: lock_ttl): an hour is far more.  An expired one reads as 0 again.
_GENERATION_TTL = 3600
#: Seconds a tag generation lives in Redis when no entry carries its tag
#: (and at least, when one does): it only has to outlive the fetches in
#: flight, and L{RedisStore.put} refuses a tagged answer of a fetch begun
#: more than half of it ago, so none outlives it (SPEC.md section 3, v3:
#: what a purge of a tag no entry carries leaves in Redis expires).  Far
#: above upstream.timeout (10 s by default) and a revalidation's two asks.
TAG_FETCH_HORIZON = 120.0
#: How often a waiter looks for the value another instance is fetching.
_POLL_INTERVAL = 0.02
#: Entries a tag purge deletes per script call: each call holds Redis for
#: about a millisecond or two.
TAG_DROP_BATCH = 200
#: The background sweep of expired tag members: every this many seconds,
#: one SCAN step over the tag sets, trimming at most SWEEP_MEMBERS of each.
SWEEP_INTERVAL = 10.0
SWEEP_MEMBERS = 1000
#: How many keys with a bad value are remembered so that each is logged once.
_BAD_KEYS_LOGGED = 1024
#: An invalidation message longer than this, or nested deeper, is dropped
#: before it is decoded (SPEC.md section 3): ours are a few hundred bytes,
#: two levels deep, and json would raise RecursionError on deep nesting.
MAX_MESSAGE_BYTES = 65536
MAX_MESSAGE_DEPTH = 8


@implementer(IStore)
class RedisStore:
    """
    Entries in Redis, shared by every instance with the same ``key_prefix``,
    with the hot ones also held in this process (``local_max_bytes``).

    Call :meth:`start` to connect and :meth:`close` to disconnect.

    @param reactor: connects (see
        L{apicache.store.redis.address.RedisAddress.endpoint}), and is the
        clock unless ``clock`` is given.
    @param url: see L{parse_redis_url}.
    @param timeout: seconds any one Redis call may take.
    @param max_entry_bytes: a bigger entry is not stored at all.
    @param max_value_bytes: a bigger stored value is not written to Redis.
    @param lock_ttl: how long a fetch on one instance holds off the others'
        (cross-instance coalescing); 0 turns that off.
    @param clock: times the calls, PINGs, retries and lock waits.
    """

    shared = True
    log = Logger()

    def __init__(
        self,
        reactor: IReactorTCP,
        url: str,
        *,
        prefix: str = "apicache",
        timeout: float = 0.5,
        local_max_bytes: int = 33554432,
        max_entry_bytes: int = 26843545,
        max_value_bytes: int = 1048576,
        lock_ttl: float = 1.0,
        tenant_max_bytes: int = 0,
        clock: IReactorTime | None = None,
        fair_share: str = "client",
    ) -> None:
        # a real reactor is also the clock (IReactorTime)
        self._clock: IReactorTime = clock if clock is not None else cast(IReactorTime, reactor)
        self.prefix = prefix
        self.timeout = timeout
        self.max_entry_bytes = max_entry_bytes
        self.max_value_bytes = min(max_value_bytes, max_entry_bytes)
        self.lock_ttl = lock_ttl
        # the in-process tier shares its room fairly too (SPEC.md section 3)
        self.local = MemoryStore(
            local_max_bytes, max_entry_bytes, tenant_max_bytes=tenant_max_bytes, clock=self._clock, fair_share=fair_share
        )
        self.instance = uuid.uuid4().hex
        self.channel = f"{prefix}:inv"
        self.counters: dict[str, int] = {
            "errors": 0,
            "timeouts": 0,
            "too_big": 0,
            "invalidations_received": 0,
            "coalesce_waits": 0,
            "local_clears": 0,
            "tag_members_swept": 0,
            "bad_values": 0,
            "bad_messages": 0,
        }
        self._bad_keys_logged: set[str] = set()
        #: called with the tenant (None: every tenant) of each tag purge
        #: another instance made, once this one has applied it
        self.tag_purge_listeners: list[Callable[[str | None], object]] = []
        self._sweep = LoopingCall(self.sweep_tags)
        self._sweep.clock = self._clock
        self._sweep_cursor: bytes = b"0"
        self._loading: dict[CacheKey, list[Deferred[CachedResponse | Variants | None]]] = {}
        self.commands, self.subscriber = self._connections(reactor, url)

    def _connections(self, reactor: IReactorTCP, url: str) -> tuple[Any, Any]:
        """
        Return the commands connection and the invalidation subscription:
        here, txredisapi's, to the one Redis ``url`` names.  (The cluster
        and sentinel store, L{apicache.store.redis.scaled}, has its own.)
        """
        self.address: Any = parse_redis_url(url)
        commands = RedisCommands(reactor, self._clock, self.address, self.timeout, self.counters)
        subscriber = RedisConnection(
            "pubsub",
            reactor,
            self._clock,
            self.address,
            lambda clock: PubSubProtocol(clock, self._message),
            prepare=lambda p: p.subscribe(self.channel),
            on_change=self._subscriber_changed,
        )
        return commands, subscriber

    @classmethod
    def from_config(cls, store_config: StoreConfig, reactor: IReactorTCP) -> RedisStore:
        """
        Return a store configured by a L{apicache.config.StoreConfig}: this
        class in single mode, a L{apicache.store.redis.scaled.ScaledRedisStore}
        in cluster and sentinel modes.

        @raise ValueError: a bad URL (or key prefix, in cluster mode).
        """
        s = store_config
        common: dict[str, Any] = {
            "prefix": s.key_prefix,
            "timeout": s.redis_timeout,
            "local_max_bytes": s.local_max_bytes,
            "max_entry_bytes": int(s.max_bytes * s.max_entry_fraction),
            "max_value_bytes": s.redis_max_value_bytes,
            "lock_ttl": s.redis_lock_ttl,
            "tenant_max_bytes": s.tenant_max_bytes,
            "fair_share": s.fair_share,
        }
        if s.redis_mode != "single":
            # (imported here: that module builds on this one)
            from apicache.store.redis.scaled import ScaledRedisStore

            return ScaledRedisStore(
                reactor, s.redis_url, mode=s.redis_mode, sentinel_master=s.redis_sentinel_master, **common
            )
        return cls(reactor, s.redis_url, **common)

    # -- connections -------------------------------------------------------

    def start(self) -> None:
        """
        Connect (and keep reconnecting) in the background.
        """
        self.commands.start()
        self.subscriber.start()
        self._sweep.start(SWEEP_INTERVAL, now=False)

    def close(self) -> Deferred[None]:
        """
        Disconnect.  Fires when both connections are closed.
        """

        async def close() -> None:
            if self._sweep.running:
                self._sweep.stop()
            await self.commands.stop()
            await self.subscriber.stop()

        return Deferred.fromCoroutine(close())

    def _subscriber_changed(self, up: bool) -> None:
        if up:
            # invalidations published while we were not listening are lost:
            # nothing held here can be trusted any more (while Redis is down
            # the tier keeps serving: SPEC.md section 4)
            self._clear_local()

    def _clear_local(self) -> None:
        if self.local.stats()["entries"]:
            self.counters["local_clears"] += 1
        self.local.clear(None)

    def is_ready(self) -> bool:
        """
        Return whether both connections are up and Redis answers PING.
        """
        return self.commands.ready() and self.subscriber.protocol is not None

    def watermarks(self, group: str) -> RedisWatermarks:
        """
        Return where the instances of consumer group ``group`` share their
        event watermarks in this Redis (SPEC.md section 5); live while this
        store's invalidation subscription is up.
        """
        return RedisWatermarks(
            self.commands.eval,
            f"{self.prefix}:events:{group}",
            self._clock,
            lambda: self.subscriber.protocol is not None,
        )

    # -- messages and tokens -------------------------------------------------

    def _publish_message(self, *change: Any) -> str:
        return json.dumps([self.instance, *change], separators=(",", ":"))

    def _local_token(self) -> Any:
        # the in-process tier answers begin() at once: its race-rule token,
        # so that a copy loaded or stored here is refused if an invalidation
        # (ours or from pub/sub) was applied meanwhile
        token: list[Any] = []
        self.local.begin(CacheKey("", "", (), "")).addCallback(token.append)
        return token[0]

    def _at(self, key: CacheKey) -> str:
        """
        Return the prefix of ``key``'s names: the store's own on one node; a
        bucket's on a Redis Cluster (L{apicache.store.redis.layout}).
        """
        return self.prefix

    # -- reading -----------------------------------------------------------

    def lookup(self, key: CacheKey) -> CachedResponse | None:
        return self.local.lookup(key)

    def variants(self, key: CacheKey) -> Variants:
        return self.local.variants(key)

    def touch_variant(self, key: CacheKey, index: int) -> None:
        # in Redis a variant moves first when it is loaded (GET_OR_LOCK)
        self.local.touch_variant(key, index)

    def load(self, key: CacheKey, max_variants: int = DEFAULT_MAX_VARIANTS) -> Deferred[CachedResponse | Variants | None]:
        """
        Fire with the entry in Redis (also kept in this process), or ``None``.
        When another instance is fetching that key (it holds the lock), wait
        for its answer up to ``lock_ttl``.  Concurrent loads of one key share
        one round trip.  A key that holds variants fires with them (no lock
        is taken: the caller loads the variant it chooses, which is locked
        if missing).
        """
        waiters = self._loading.get(key)
        mine: Deferred[CachedResponse | Variants | None] = Deferred()
        if waiters is not None:
            waiters.append(mine)
            return mine
        waiters = self._loading[key] = [mine]

        def settle(outcome: Any) -> None:
            del self._loading[key]
            for w in waiters:
                if w.called:
                    continue  # cancelled: the caller went away
                if isinstance(outcome, Failure):
                    w.errback(outcome)
                else:
                    w.callback(outcome)

        Deferred.fromCoroutine(self._load(key, max_variants)).addBoth(settle)
        return mine

    async def _load(self, key: CacheKey, max_variants: int) -> CachedResponse | Variants | None:
        local_token = self._local_token()
        # the copy kept here counts for the client whose request loaded it
        client = current_client()
        p = self._at(key)
        rkey = encode_key(p, key)
        lock_ms = int(self.lock_ttl * 1000)
        deadline = self._clock.seconds() + self.lock_ttl
        base = base_key(key)
        # a variant's selector, in hex ("" for a key)
        selector = key.variant[len(base.variant) + len(VARIANT_MARK) :] if base is not key else ""
        while True:
            reply = await self.commands.eval(
                scripts.GET_OR_LOCK,
                [rkey, lock_key(p, key), tag_record_key(p, key), variants_key(p, base)],
                [self.instance, lock_ms, p, encode_component(key.tenant), selector],
            )
            if reply[0] == 4:
                variants = decode_variants(reply[1])
                if variants is None:
                    self._bad(variants_key(p, base), "a damaged list of variants")
                return variants
            if reply[0] == 0 or reply[0] == 3:
                entry = self._checked(rkey, decode_entry(reply[1]), selector)
                # (a Lua nil at the end of a table is left out of the reply)
                tags = decode_tag_record(reply[2] if len(reply) > 2 else None)
                if entry is not None and tags is None:
                    self._bad(tag_record_key(p, key), "a damaged tag record")
                    entry = None
                if entry is not None and tags is not None:
                    entry.tags = tags
                    if reply[0] == 3:
                        # a refresh of one of its tags came after it was stored
                        entry.stale = True
                        entry.retry_at = 0.0
                    self.local.put_now(key, entry, local_token, client, max_variants)
                return entry
            if reply[0] == 1 or self._clock.seconds() >= deadline:
                # ours to fetch (or waited long enough: fetch anyway)
                self.local.discard(key)
                return None
            self.counters["coalesce_waits"] += 1
            await deferLater(self._clock, _POLL_INTERVAL, lambda: None)

    def _checked(self, rkey: str, entry: CachedResponse | None, selector: str = "") -> CachedResponse | None:
        """
        Return ``entry`` if it may be replayed (L{entry_problem}) and is
        what its key holds (a variant under the key of its ``selector``,
        or an entry that serves every request under a request's key),
        else ``None`` (a miss), counted and logged once per key.
        """
        if entry is None:
            return None
        problem = entry_problem(entry)
        if problem is None:
            held = entry.variant.selector.hex() if entry.variant is not None else ""
            if held == selector:
                return entry
            problem = "an entry under another key's name"
        self._bad(rkey, problem)
        return None

    def _bad(self, rkey: str, problem: str) -> None:
        """
        Count and log (once per key) a bad value read at ``rkey`` (it is
        served as a miss).
        """
        self.counters["bad_values"] += 1
        if rkey not in self._bad_keys_logged:
            if len(self._bad_keys_logged) >= _BAD_KEYS_LOGGED:
                self._bad_keys_logged.clear()
            self._bad_keys_logged.add(rkey)
            # the key is ours (percent-encoded), the value's bytes are not logged
            self.log.warn("ignored a bad value in Redis at {rkey}: {problem}", rkey=rkey[:512], problem=problem)

    # -- writing -----------------------------------------------------------

    def begin(self, key: CacheKey) -> Deferred[Any]:
        local_token = self._local_token()
        began = self._clock.seconds()
        p = self._at(key)
        d = self.commands.execute("MGET", *generation_keys(p, key), f"{p}:seq")
        d.addCallback(
            lambda gens: (
                tuple(g if g is not None else b"0" for g in gens[:-1]),
                int(gens[-1] or 0),
                local_token,
                began,
            )
        )
        return d

    def put(
        self, key: CacheKey, entry: CachedResponse, token: Any, max_variants: int = DEFAULT_MAX_VARIANTS
    ) -> Deferred[bool]:
        gens, seq, local_token, began = token
        # read now: Redis answers in another context (SPEC.md section 3, fair share)
        client = current_client()
        if entry.tags and self._clock.seconds() - began > TAG_FETCH_HORIZON / 2:
            # a purge of one of its tags during the fetch may have left a
            # generation that has expired by now (PURGE_TAG): not stored
            self.release(key, token)
            return succeed(False)
        value = encode_entry(entry)
        ttl_ms = int((max(entry.stale_until, entry.keep_until) - self._clock.seconds()) * 1000)
        if ttl_ms <= 0 or len(value) > self.max_value_bytes or entry.size() > self.max_entry_bytes:
            if len(value) > self.max_value_bytes:
                self.counters["too_big"] += 1
            return succeed(False)
        p = self._at(key)
        # the entry goes under its variant's key (or its key's own); the
        # lock released is the fetch's
        base = base_key(key)
        target = base if entry.variant is None else variant_key(base, entry.variant.selector)
        keys = [
            encode_key(p, target),
            f"{p}:r:{resource_name(key.tenant, key.route, key.params)}",
            f"{p}:t:{route_name(key.route, key.params)}",
            *generation_keys(p, key),
            lock_key(p, key),
            tag_record_key(p, target),
        ]
        variants_keys = [encode_key(p, base), tag_record_key(p, base), variants_key(p, base)]
        record = "" if entry.variant is None else encode_variant_record(entry.variant)
        if entry.tags:
            keys.append(f"{p}:L")
            args = [*gens, value, ttl_ms, self.instance, *encode_tag_record(seq, entry.tags)]
            args[8:8] = [p, encode_component(key.tenant)]
            d = self.commands.eval(scripts.PUT_TAGGED, keys + variants_keys, [*args, record, max_variants])
        else:
            d = self.commands.eval(
                scripts.PUT, keys + variants_keys, [*gens, value, ttl_ms, self.instance, record, max_variants]
            )

        def stored(n: int) -> bool:
            if n != 1:
                return False
            self.local.put_now(key, entry, local_token, client, max_variants)
            return True

        return d.addCallback(stored)

    def release(self, key: CacheKey, token: Any) -> None:
        if not self.lock_ttl:
            return
        d = self.commands.eval(scripts.RELEASE, [lock_key(self._at(key), key)], [self.instance])
        # best effort: the lock expires by itself after lock_ttl
        d.addErrback(lambda f: f.trap(StoreUnavailable))

    def discard(self, key: CacheKey) -> Deferred[int]:
        self.local.discard(key)
        rkey = encode_key(self._at(key), key)
        message = self._publish_message("d", key.tenant, key.route, list(key.params), key.variant)

        def publish(n: int) -> Deferred[int]:
            return self.commands.execute("PUBLISH", self.channel, message).addCallback(lambda _: n)

        return self.commands.execute("DEL", rkey).addCallback(publish)

    def _change(self, action: str, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        p = self.prefix
        rp = route_name(route, params)
        if tenant is None:
            keys = [f"{p}:G:{rp}", f"{p}:t:{rp}"]
            mode = "all"
        else:
            res = resource_name(tenant, route, params)
            keys = [f"{p}:g:{res}", f"{p}:r:{res}"]
            mode = "one"
        message = self._publish_message("s" if action == "stale" else "i", tenant, route, list(params))
        return self.commands.eval(
            scripts.CHANGE, keys, [mode, action, self.channel, message, _GENERATION_TTL, f"{p}:v:"]
        )

    def invalidate(self, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        # dropped here at once, whatever Redis says: never serve it again
        self.local.invalidate(tenant, route, params)
        return self._change("drop", tenant, route, params)

    def mark_stale(self, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        self.local.mark_stale(tenant, route, params)
        return self._change("stale", tenant, route, params)

    def clear(self, tenant: str | None) -> Deferred[int]:
        self.local.clear(tenant)
        return Deferred.fromCoroutine(self._clear(tenant))

    async def _clear(self, tenant: str | None) -> int:
        p = self.prefix
        message = self._publish_message("c", tenant)
        # the generation first, so that fetches in flight don't store
        gen = f"{p}:A" if tenant is None else f"{p}:T:{encode_component(tenant)}"
        await self.commands.eval(scripts.BUMP, [gen], [self.channel, message, _GENERATION_TTL])
        # SCAN, not KEYS nor FLUSHDB: only our prefix, without blocking Redis
        # one pass over the keyspace; generations stay (they only grow)
        if tenant is None:
            patterns = [f"{p}:[ertlnzZpv]:*"]
        else:
            patterns = [f"{p}:[erlnzv]:{encode_component(tenant)}:*"]
        entry_prefix = f"{p}:e:".encode()
        n = 0
        for pattern in patterns:
            cursor = b"0"
            while True:
                cursor, found = await self.commands.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                if found:
                    await self.commands.execute("UNLINK", *found)
                    n += sum(1 for k in found if k.startswith(entry_prefix))
                if cursor in (b"0", 0, "0"):
                    break
        return n

    def forget(self, tenant: str, route: str) -> None:
        self.local.forget(tenant, route)

    # -- tags ----------------------------------------------------------------

    def purge_tag(self, tenant: str | None, tag: str, stale: bool = False) -> Deferred[int]:
        """
        Purge ``tag`` here at once, then in Redis: its generation is bumped
        and published (every instance's in-process tier drops the entries;
        no fetch in flight stores them), then the entries are deleted in
        batches of L{TAG_DROP_BATCH}.  Fires with the entries deleted (or
        marked stale) in Redis; errbacks with L{StoreUnavailable}.
        """
        self.local.purge_tag(tenant, tag, stale)
        return Deferred.fromCoroutine(self._purge_tag(tenant, tag, stale))

    async def _purge_tag(self, tenant: str | None, tag: str, stale: bool) -> int:
        p = self.prefix
        message = self._publish_message("g", tenant, tag, stale)
        seq, n, moved = await self.commands.eval(
            scripts.PURGE_TAG,
            [f"{p}:seq", f"{p}:L"],
            [p, "" if tenant is None else encode_component(tenant), encode_component(tag),
             "1" if stale else "0", self.channel, message, int(TAG_FETCH_HORIZON * 1000)],
        )
        for aside in moved:
            while True:
                dropped, left = await self.commands.eval(scripts.DROP_BATCH, [aside], [TAG_DROP_BATCH, seq, len(p)])
                n += dropped
                if not left:
                    break
        return int(n)

    def sweep_tags(self) -> Deferred[int]:
        """
        One step of the background sweep: SCAN on from where the last step
        stopped over the tag sets, trimming expired members of each.  Fires
        with the members trimmed (0 when Redis is unreachable: the next step
        tries again).
        """

        async def step() -> int:
            cursor, found = await self.commands.execute(
                "SCAN", self._sweep_cursor, "MATCH", f"{self.prefix}:[zZ]:*", "COUNT", 200
            )
            self._sweep_cursor = cursor if cursor not in (b"0", 0, "0") else b"0"
            if not found:
                return 0
            n = int(await self.commands.eval(scripts.SWEEP_TAGS, list(found), [SWEEP_MEMBERS]))
            self.counters["tag_members_swept"] += n
            return n

        def failed(f: Failure) -> int:
            # the sweep goes on at the next step whatever happened
            if not f.check(StoreUnavailable):
                self.log.failure("tag sweep step failed", f)
            return 0

        return Deferred.fromCoroutine(step()).addErrback(failed)

    def tag_stats(self) -> dict[str, int]:
        return self.local.tag_stats()

    # -- invalidations from other instances ----------------------------------

    def _message(self, message: bytes) -> None:
        """
        Apply an invalidation published by another instance to the
        in-process tier.  A malformed message (over L{MAX_MESSAGE_BYTES},
        nested deeper than L{MAX_MESSAGE_DEPTH}, or not one this store
        writes) is skipped, counted and logged (not in full); nothing
        raises into the connection, so the messages that follow it in the
        same read are still applied.
        """
        try:
            change = _parse_message(message)
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            self.counters["bad_messages"] += 1
            self.log.warn("ignored a malformed invalidation message ({n} bytes): {why}", n=len(message), why=_why(e))
            return
        try:
            self._apply(*change)
        except Exception:
            # a bug, not the message's fault: the connection carries on
            self.log.failure("could not apply an invalidation message")

    def _apply(self, origin: str, kind: str, args: tuple[Any, ...]) -> None:
        if origin == self.instance:
            return
        self.counters["invalidations_received"] += 1
        if kind == "i":
            self.local.invalidate(*args)
        elif kind == "s":
            self.local.mark_stale(*args)
        elif kind == "c":
            self.local.clear(*args)
        elif kind == "d":
            tenant, route, params, variant = args
            self.local.discard(CacheKey(tenant, route, params, variant))
        else:
            tenant, tag, stale = args
            self.local.purge_tag(tenant, tag, stale)
            for listener in self.tag_purge_listeners:
                listener(tenant)

    # -- health ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return self.local.stats()

    def detailed_stats(self) -> dict[str, int]:
        """
        Return the in-process tier's L{MemoryStore.detailed_stats}.
        """
        return self.local.detailed_stats()

    def top_tenants(self, n: int = 10) -> list[tuple[str, int, int]]:
        """
        Return the in-process tier's L{MemoryStore.top_tenants}.
        """
        return self.local.top_tenants(n)

    def client_sizes(self) -> dict[int, tuple[int, int]]:
        """
        Return ``(bytes, entries)`` per client in the in-process tier.
        """
        return self.local.client_sizes()

    def tenant_entries(self) -> dict[str, int]:
        """
        Return the entries held in this process per tenant (read at metrics
        scrape time); Redis holds more.
        """
        return self.local.tenant_entries()

    def metrics(self) -> Iterator[Metric]:
        """
        Yield this store's Prometheus metric families (a source for
        L{apicache.ops.metrics.Metrics.add_source}).
        """
        c = self.counters
        yield CounterMetricFamily("apicache_redis_errors", "Redis calls that failed: not connected, not answering, or an error reply (timeouts are counted apart).", value=c["errors"])
        yield CounterMetricFamily("apicache_redis_timeouts", "Redis calls without an answer within store.redis_timeout.", value=c["timeouts"])
        yield CounterMetricFamily("apicache_redis_values_too_big", "Answers over store.redis_max_value_bytes, not written to Redis.", value=c["too_big"])
        yield CounterMetricFamily("apicache_redis_invalidations_received", "Invalidations from other instances applied to the in-process tier.", value=c["invalidations_received"])
        yield CounterMetricFamily("apicache_redis_coalesce_waits", "Polls for an answer another instance was fetching.", value=c["coalesce_waits"])
        yield CounterMetricFamily("apicache_store_bad_values", "Values read from Redis that failed validation (bad status or header), served as misses.", value=c["bad_values"])
        yield CounterMetricFamily("apicache_redis_bad_messages", "Malformed messages on the invalidation channel (over 64 KiB, nested deeper than 8, or not an invalidation), skipped.", value=c["bad_messages"])
        yield CounterMetricFamily("apicache_redis_local_clears", "Times the in-process tier was emptied because the pub/sub connection was remade.", value=c["local_clears"])
        yield GaugeMetricFamily("apicache_redis_up", "1 while Redis is connected and answering.", value=1 if self.is_ready() else 0)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _params(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError("not a list")
    return tuple(_text(p) for p in value)


class _TooBig(ValueError):
    """A message over L{MAX_MESSAGE_BYTES} or nested deeper than L{MAX_MESSAGE_DEPTH}."""


def _why(e: Exception) -> str:
    # our own words only: a decoding error may quote the message
    return str(e) if isinstance(e, _TooBig) else "not an invalidation"


#: The next JSON string or bracket, and the rest of a string after its quote.
_JSON_NEXT = re.compile(rb'["\[\]{}]')
_JSON_STRING_REST = re.compile(rb'(?:[^"\\]|\\.)*"', re.S)


def _check_bounds(message: bytes) -> None:
    """
    Raise L{_TooBig} for a message over L{MAX_MESSAGE_BYTES}, or whose
    arrays and objects nest deeper than L{MAX_MESSAGE_DEPTH}, outside
    strings; in time linear in its length, before any decoding.

    @raise ValueError: also for a string left open (not JSON anyway).
    """
    if len(message) > MAX_MESSAGE_BYTES:
        raise _TooBig(f"over {MAX_MESSAGE_BYTES} bytes")
    if message.count(b"[") + message.count(b"{") <= MAX_MESSAGE_DEPTH:
        return
    depth = 0
    pos = 0
    while True:
        found = _JSON_NEXT.search(message, pos)
        if found is None:
            return
        c = message[found.start()]
        pos = found.end()
        if c == 0x22:  # '"': skip the string, once
            rest = _JSON_STRING_REST.match(message, pos)
            if rest is None:
                raise ValueError("a string left open")
            pos = rest.end()
        elif c in b"[{":
            depth += 1
            if depth > MAX_MESSAGE_DEPTH:
                raise _TooBig(f"nested deeper than {MAX_MESSAGE_DEPTH}")
        else:
            depth -= 1


def _parse_message(message: bytes) -> tuple[str, str, tuple[Any, ...]]:
    """
    Return ``(origin, kind, arguments)`` of an invalidation message, as
    L{RedisStore._publish_message} writes them: ``i``/``s`` (tenant or
    null, route, params), ``c`` (tenant or null), ``d`` (tenant, route,
    params, variant), ``g`` (tenant or null, tag, whether to mark stale:
    a tag purge).

    @raise ValueError: over L{MAX_MESSAGE_BYTES}, nested deeper than
        L{MAX_MESSAGE_DEPTH}, not JSON, an unknown kind, or the wrong arity.
    @raise TypeError: a field of the wrong type.
    """
    _check_bounds(message)
    data = json.loads(message)
    if not isinstance(data, list) or len(data) < 2:
        raise ValueError("not a list of at least two")
    origin, kind, *rest = data
    origin = _text(origin)
    if kind in ("i", "s") and len(rest) == 3:
        return origin, kind, (_optional_text(rest[0]), _text(rest[1]), _params(rest[2]))
    if kind == "c" and len(rest) == 1:
        return origin, kind, (_optional_text(rest[0]),)
    if kind == "d" and len(rest) == 4:
        return origin, kind, (_text(rest[0]), _text(rest[1]), _params(rest[2]), _text(rest[3]))
    if kind == "g" and len(rest) == 3:
        if not isinstance(rest[2], bool):
            raise TypeError("not a boolean")
        return origin, kind, (_optional_text(rest[0]), _text(rest[1]), rest[2])
    raise ValueError("an unknown kind or the wrong number of fields")
