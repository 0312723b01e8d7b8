"""
The Redis store on a Redis Cluster (C{redis_mode = "cluster"}) or on a
primary that sentinels manage (C{"sentinel"}), SPEC.md section 7.

L{ScaledRedisStore} is L{RedisStore} with other connections (redis-py on a
thread pool, L{apicache.store.redis.threaded}), another key layout on a
cluster (L{apicache.store.redis.layout}), and purges confirmed by the
replicas.  How each promise of the single-node store holds across slots:

B{One slot per script.}  A resource's keys live in its bucket, C{P:{b}}:
its entries, lock, tag records and index sets, and the bucket's copies of
every generation that covers them (C{A}, C{T:<tenant>}, C{G:<route>}, the
tag generations and C{seq}).  Every script of
L{apicache.store.redis.scripts} runs unchanged with C{P:{b}} as its prefix,
so it reads and writes one slot, atomically, exactly as on one node.

B{The race rule.}  L{begin <RedisStore.begin>} reads the four generations
and the tag sequence of the key's bucket in one C{MGET}; the store script
compares them in the same bucket, atomically.  An invalidation of many
buckets (a resource of every tenant: all L{BUCKETS}; a tenant's clear or
tag purge: its L{STRIPE} buckets; C{/clear} and a tag of every tenant: all)
runs one script per bucket, each bumping that bucket's copy and deleting in
the same script.  So, in every bucket, a fetch begun before the bump there
can't store after it, and an entry stored before it is deleted by it.  The
invalidation is answered once every bucket has run it: by then no fetch
begun before the answer can store anywhere, which is what the rule promises
on one node.

B{Tags.}  Each bucket has its own tag sequence (C{P:{b}:seq}) and tag
generations, and a tagged entry compares only with those of its own
bucket: its fetch's sequence is read with the bucket's generations, and a
purge of a tag takes the next number in each bucket it runs in.  A purge's
entries are deleted in batches, per bucket, as on one node.

B{Invalidation messages.}  A change of one bucket publishes from inside its
script, as on one node.  A change of several publishes nothing per bucket;
it publishes once after every bucket has run (so no instance can reload,
between the message and the last bucket, what that bucket was about to
delete; a load in flight meanwhile is refused by the in-process tier's own
generation, as on one node).  Classic PUBLISH reaches every node of a
cluster, so an instance subscribes on any node; with Sentinel, on the
master, found again after a failover.  A subscription made again empties
the in-process tier, as on one node.

B{Confirmed by the replicas.}  An invalidation, a clear and a tag purge
are answered only once the replicas listed for every primary they wrote
to (C{CLUSTER SHARDS}, C{SENTINEL REPLICAS}) acknowledged the writes
(L{ThreadedCommands.confirm}: C{WAIT} on the writing connection, within
C{redis_timeout}); else they fail with L{StoreUnavailable}, answered 503
C{store_unavailable}.  A failover promotes a replica that holds every
purge answered 200: its generations are bumped there, so nothing they
covered is served again, and no fetch begun before them can store.  (What
such a purge had already bumped stays bumped: that only refuses or
deletes more.)  Entries stored and not yet copied when the primary dies
are lost, which a cache may.

B{Watermarks} (bounded staleness, SPEC.md section 5) stay one hash in one
slot, read and merged by one script each with that node's clock.  A merge
lost in a failover makes a mark earlier, never later (it is merged with
max), which costs freshness, never correctness; after a failover the marks
are read with the promoted node's clock, so the Redis hosts' clocks must
agree to within what C{max_staleness} can spare (NTP keeps them within
milliseconds).  A subscription lost for a moment makes the instance stop
vouching until it is back (L{RedisStore.is_ready}), as on one node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, Metric
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTCP, IReactorThreads
from twisted.python.failure import Failure

from apicache.cache.keys import CacheKey
from apicache.store.interface import StoreUnavailable
from apicache.store.redis import scripts
from apicache.store.redis.address import parse_redis_seeds
from apicache.store.redis.codec import encode_component, resource_name, route_name
from apicache.store.redis.layout import BUCKETS, STRIPE, BucketLayout, SingleLayout
from apicache.store.redis.store import _GENERATION_TTL, SWEEP_MEMBERS, TAG_DROP_BATCH, TAG_FETCH_HORIZON, RedisStore
from apicache.store.redis.threaded import (
    THREADS,
    Backend,
    ClusterBackend,
    NotConfirmed,
    SentinelBackend,
    ThreadedCommands,
    ThreadedSubscriber,
)

__all__ = ["ScaledRedisStore", "BUCKETS", "STRIPE"]


class ScaledRedisStore(RedisStore):
    """
    L{RedisStore} on a Redis Cluster (C{mode="cluster"}: ``url`` names seed
    nodes) or on the master that sentinels name (C{mode="sentinel"}: ``url``
    names the sentinels, ``sentinel_master`` the master).  See the module
    docstring for how its promises hold.

    @param threads: the size of its thread pool.
    @raise ValueError: a bad URL, or (cluster) a C{prefix} holding a brace.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        url: str,
        *,
        mode: str = "cluster",
        sentinel_master: str = "mymaster",
        threads: int = THREADS,
        prefix: str = "apicache",
        **kwargs: Any,
    ) -> None:
        if mode not in ("cluster", "sentinel"):
            raise ValueError(f"not a redis_mode of several nodes: {mode!r}")
        self.mode = mode
        self.sentinel_master = sentinel_master
        self._threads = threads
        self.layout: BucketLayout | SingleLayout = BucketLayout(prefix) if mode == "cluster" else SingleLayout(prefix)
        self._sweep_cursors: dict[str, int] = {}
        super().__init__(reactor, url, prefix=prefix, **kwargs)
        self.counters["purges_confirmed"] = 0
        self.counters["purges_not_confirmed"] = 0

    def _connections(self, reactor: IReactorTCP, url: str) -> tuple[Any, Any]:
        seeds = parse_redis_seeds(url, 6379 if self.mode == "cluster" else 26379)
        self.address = seeds
        connect: Callable[[], Backend]
        if self.mode == "cluster":
            timeout = self.timeout

            def connect() -> Backend:
                return ClusterBackend(seeds, timeout, barriers)

            barriers = [f"{bucket}:wait" for bucket in self.layout.every()]
        else:
            master, barrier, timeout = self.sentinel_master, f"{self.prefix}:wait", self.timeout

            def connect() -> Backend:
                return SentinelBackend(seeds, master, timeout, barrier)

        commands = ThreadedCommands(cast(IReactorThreads, reactor), self._clock, connect, self.timeout, self.counters, self._threads)
        subscriber = ThreadedSubscriber(
            cast(IReactorFromThreads, reactor), commands, self.channel, self._message, self._subscriber_changed
        )
        return commands, subscriber

    def _at(self, key: CacheKey) -> str:
        return self.layout.at(key)

    # -- what spans buckets ----------------------------------------------------

    async def _each(
        self,
        targets: list[str],
        script: str,
        keys: Callable[[str], list[str]],
        args: Callable[[str, str], list[Any]],
        message: str,
        confirm: bool = True,
    ) -> list[Any]:
        """
        Run ``script`` in every bucket of ``targets`` (with ``keys(bucket)``
        and ``args(bucket, channel)``), the buckets of each primary in one
        pipeline.  The channel is ours when there is one bucket (its script
        publishes ``message``), else empty, and ``message`` is published
        once after every bucket has run, whatever happened.  Then (with
        ``confirm``) wait for the replicas (L{ThreadedCommands.confirm}).

        @return: each bucket's reply.
        @raise StoreUnavailable: a bucket failed, or the replicas did not
            confirm.
        """
        channel = self.channel if len(targets) == 1 else ""
        before = self.commands.placement(targets) if confirm else None
        error: Failure | None = None
        replies: list[Any] = []
        try:
            if len(targets) == 1:
                replies = [await self.commands.eval(script, keys(targets[0]), args(targets[0], channel))]
            else:
                replies = await self.commands.eval_many(script, [(keys(t), args(t, channel)) for t in targets])
                failed = [r for r in replies if isinstance(r, Exception)]
                if failed:
                    self.counters["errors"] += 1
                    raise StoreUnavailable(f"redis: {len(failed)} of {len(replies)} buckets failed: {failed[0]}")
        except StoreUnavailable:
            error = Failure()
        if not channel:
            try:
                await self.commands.execute("PUBLISH", self.channel, message)
            except StoreUnavailable:
                error = error or Failure()
        if error is not None:
            error.raiseException()
        if confirm:
            await self._confirm(targets, before)
        return replies

    async def _confirm(self, targets: list[str], before: Any) -> None:
        try:
            try:
                await self.commands.confirm(targets, before)
            except NotConfirmed as e:
                if e.shortfall:
                    raise
                # the time went on redirections (a slot migrating) or a busy
                # moment, not on replicas that did not acknowledge: once more
                await self.commands.confirm(targets, before)
        except StoreUnavailable:
            self.counters["purges_not_confirmed"] += 1
            raise
        self.counters["purges_confirmed"] += 1

    def _change(self, action: str, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        rp = route_name(route, params)
        message = self._publish_message("s" if action == "stale" else "i", tenant, route, list(params))
        if tenant is None:
            targets, mode = self.layout.every(), "all"

            def keys(t: str) -> list[str]:
                return [f"{t}:G:{rp}", f"{t}:t:{rp}"]
        else:
            res = resource_name(tenant, route, params)
            targets, mode = [self.layout.resource(tenant, route, params)], "one"

            def keys(t: str) -> list[str]:
                return [f"{t}:g:{res}", f"{t}:r:{res}"]

        async def change() -> int:
            replies = await self._each(
                targets, scripts.CHANGE, keys, lambda t, ch: [mode, action, ch, message, _GENERATION_TTL, f"{t}:v:"], message
            )
            return sum(int(n) for n in replies)

        return Deferred.fromCoroutine(change())

    async def _clear(self, tenant: str | None) -> int:
        message = self._publish_message("c", tenant)
        if tenant is None:
            targets, generation = self.layout.every(), "A"
        else:
            targets, generation = self.layout.of_tenant(tenant), f"T:{encode_component(tenant)}"
        before = self.commands.placement(self.layout.every())
        # the generations first, so that fetches in flight don't store
        await self._each(
            targets, scripts.BUMP, lambda t: [f"{t}:{generation}"], lambda t, ch: [ch, message, _GENERATION_TTL],
            message, confirm=False,
        )
        # then one SCAN pass over every primary (a tenant's keys are in its
        # buckets, but SCAN can't be asked for a slot); generations stay
        pattern = self.layout.clear_pattern(tenant)
        layout = self.layout

        def scan_unlink(b: Backend, node: Any, cursor: int) -> tuple[int, int]:
            cursor, found = b.scan(node, cursor, pattern, 1000)
            for group in layout.by_bucket(found):
                b.client.unlink(*group)
            return cursor, sum(1 for k in found if layout.is_entry(k))

        n = 0
        for node in await self.commands.call(lambda b: b.primaries()):
            cursor = 0
            while True:
                cursor, entries = await self.commands.call(scan_unlink, node, cursor)
                n += entries
                if not cursor:
                    break
        # the deletions were made on every primary
        await self._confirm(self.layout.every(), before)
        return n

    async def _purge_tag(self, tenant: str | None, tag: str, stale: bool) -> int:
        message = self._publish_message("g", tenant, tag, stale)
        targets = self.layout.every() if tenant is None else self.layout.of_tenant(tenant)
        fixed = ["" if tenant is None else encode_component(tenant), encode_component(tag), "1" if stale else "0"]
        horizon = int(TAG_FETCH_HORIZON * 1000)
        replies = await self._each(
            targets, scripts.PURGE_TAG, lambda t: [f"{t}:seq", f"{t}:L"],
            lambda t, ch: [t, *fixed, ch, message, horizon], message,
        )
        # the generations are bumped (and confirmed): nothing purged is
        # served or stored from now on; what was moved aside is deleted in
        # batches, as on one node, every bucket's next batch in one go
        n = 0
        batches: list[tuple[str, int, int]] = []
        for t, (seq, counted, moved) in zip(targets, replies, strict=True):
            n += int(counted)
            batches += [(aside, int(seq), len(t)) for aside in moved]
        while batches:
            done = await self.commands.eval_many(
                scripts.DROP_BATCH, [([aside], [TAG_DROP_BATCH, seq, plen]) for aside, seq, plen in batches]
            )
            left = []
            for batch, reply in zip(batches, done, strict=True):
                if isinstance(reply, Exception):
                    raise StoreUnavailable(f"redis: {reply}")
                n += int(reply[0])
                if reply[1]:
                    left.append(batch)
            batches = left
        return n

    def metrics(self) -> Iterator[Metric]:
        """
        Yield L{RedisStore.metrics}, and the purges confirmed by the
        replicas and those that could not be.
        """
        yield from super().metrics()
        c = self.counters
        yield CounterMetricFamily(
            "apicache_redis_purges_confirmed",
            "Purges (invalidations, clears, tag purges) the replicas acknowledged (cluster and sentinel modes).",
            value=c["purges_confirmed"],
        )
        yield CounterMetricFamily(
            "apicache_redis_purges_not_confirmed",
            "Purges answered 503 because the replicas did not acknowledge them within store.redis_timeout.",
            value=c["purges_not_confirmed"],
        )

    def sweep_tags(self) -> Deferred[int]:
        """
        One step of the background sweep: on every primary, one SCAN step
        on from where the last one stopped over the tag sets, trimming
        expired members (one script per bucket found).  Fires with the
        members trimmed (0 when Redis is unreachable).
        """
        pattern = self.layout.sweep_pattern()

        async def step() -> int:
            n = 0
            for node in await self.commands.call(lambda b: b.primaries()):
                name = getattr(node, "name", "")
                cursor, found = await self.commands.call(
                    lambda b, node=node, cursor=self._sweep_cursors.get(name, 0): b.scan(node, cursor, pattern, 200)
                )
                self._sweep_cursors[name] = cursor
                for group in self.layout.by_bucket(found):
                    n += int(await self.commands.eval(scripts.SWEEP_TAGS, group, [SWEEP_MEMBERS]))  # type: ignore[arg-type]
            self.counters["tag_members_swept"] += n
            return n

        def failed(f: Failure) -> int:
            if not f.check(StoreUnavailable):
                self.log.failure("tag sweep step failed", f)
            return 0

        return Deferred.fromCoroutine(step()).addErrback(failed)
