"""
The Redis store's connections in cluster and sentinel modes: redis-py's
blocking L{RedisCluster <redis.cluster.RedisCluster>} and
L{Sentinel.master_for <redis.sentinel.Sentinel.master_for>}, called on a
bounded thread pool of the store's own (docs/benchmarks.md, "Redis clients":
why these, and why threads rather than the asyncio reactor).

redis-py follows C{MOVED} and C{ASK}, retries C{TRYAGAIN}, C{CLUSTERDOWN}
and lost connections (refreshing its slot map), and finds the master through
the sentinels; what is configured here is how long it may take: every call
is bounded by the store's C{redis_timeout}, on both sides of the thread hop
(see L{ThreadedCommands.call}).  Nothing here knows slots or sentinels
beyond asking redis-py.

What redis-py does not do is confirm a write on a primary's replicas:
C{WAIT} counts the writes of the connection it is sent on, and the cluster
client sends it to every primary and sums the replies.  L{Backend.confirm}
does it per primary, on one connection of that primary: a small write (the
barrier) then C{WAIT}.  The barrier's replication offset is at least that
of every write the primary answered before it, so C{WAIT} acknowledging it
acknowledges them too (SPEC.md section 7, WAIT-confirmed purges).  The
primaries to confirm are those that served the purge's keys when it began
(L{Backend.placement}) and those that serve them now: a primary that died
or stopped being one in between can't be confirmed, and the purge is not.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from apicache.store.interface import StoreUnavailable
from apicache.store.redis.address import RedisSeeds
from apicache.store.redis.connection import PING_INTERVAL, PINGS_BEFORE_RECONNECT, retry_delay

__all__ = [
    "THREADS",
    "REPLICAS_TTL",
    "Backend",
    "ClusterBackend",
    "SentinelBackend",
    "ThreadedCommands",
    "ThreadedSubscriber",
    "NotConfirmed",
]

#: Threads of a store's pool: calls in flight to Redis at once.  The
#: measured client cost per call is flat from 8 to 32 in flight
#: (docs/benchmarks.md); more threads only hold more calls to a dead node.
THREADS = 16
#: Seconds the replica counts of the primaries (CLUSTER SHARDS, SENTINEL
#: REPLICAS) are reused before they are asked again.
REPLICAS_TTL = 1.0
#: How long the barrier key of a confirmation lives: it only needs to be
#: written, and one left behind would be written in place while its slot
#: migrates, where a missing one is redirected (ASK) to the importing node,
#: which must then be confirmed too.
_BARRIER_MS = 1
#: What a WAIT leaves of the deadline: Redis ends a WAIT that timed out on
#: the next turn of its event loop, up to 100 ms late (hz 10), and the
#: answer must come within the socket timeout, which is the deadline.
_WAIT_MARGIN = 0.15

log = Logger(namespace="apicache.store.redis.threaded")


class NotConfirmed(StoreUnavailable):
    """
    The replicas of a primary did not acknowledge its writes within the
    deadline (fewer C{WAIT} acknowledgements than replicas listed, or no
    answer).

    @ivar shortfall: whether a C{WAIT} ran out of time with fewer
        acknowledgements than replicas listed; else the time went on
        redirections, a primary not answering, or the queue.
    """

    def __init__(self, message: str, shortfall: bool = False) -> None:
        super().__init__(message)
        self.shortfall = shortfall


def _retry(timeout: float) -> Retry:
    # Retries of a lost connection or a timeout, spaced 20 ms, 40 ms, then
    # 80 ms: with the store's deadline of a few hundred ms, three tries fit
    # when connections are refused at once (a dead node on the same host
    # network), and a node that does not answer at all uses the deadline
    # up in its first try (socket_timeout is the deadline too).
    return Retry(ExponentialBackoff(cap=min(0.1, timeout / 4), base=0.02), 3)


class Backend:
    """
    One redis-py client and what the store needs of it beyond commands:
    the primaries (to SCAN each), confirmations (barrier + C{WAIT}), a
    client to subscribe with.  Built and used in the store's threads only.

    @ivar client: the redis-py client that keyed commands and scripts go
        through.
    """

    client: Any

    def ping(self) -> None:
        """
        Raise unless Redis answers PING (every primary, with Cluster, or
        at least one: see the subclasses).
        """
        raise NotImplementedError

    def primaries(self) -> list[Any]:
        """
        Return a handle of each primary, for L{scan}.
        """
        raise NotImplementedError

    def scan(self, node: Any, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        """
        Run one SCAN step on ``node``; return the next cursor and the keys.
        """
        raise NotImplementedError

    def placement(self, keys: Sequence[str]) -> Any:
        """
        Return where ``keys`` are written now, as the client knows it
        without asking Redis (it runs in the reactor thread), for
        L{confirm}.
        """
        raise NotImplementedError

    def confirm(self, keys: Sequence[str], deadline: float, before: Any = None) -> int:
        """
        Return once every primary serving one of ``keys`` (now, or when
        ``before`` was taken) has had all the writes it answered so far
        acknowledged by its listed replicas; return how many primaries
        needed a C{WAIT}.

        @param keys: keys (hash tags) whose primaries wrote.
        @param deadline: C{time.monotonic()} by which to be done.
        @param before: L{placement} of ``keys`` before the writes.
        @raise NotConfirmed: not so by ``deadline``.
        """
        raise NotImplementedError

    def subscriber(self, attempt: int) -> Redis:
        """
        Return a client to subscribe with (a different node on each
        ``attempt`` where there are several), that does not reconnect by
        itself: a lost subscription must be seen, since messages were lost.
        """
        raise NotImplementedError

    def close(self) -> None:
        """
        Close every connection.
        """
        raise NotImplementedError


def _connection_kwargs(seeds: RedisSeeds, timeout: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "username": seeds.username,
        "password": seeds.password,
    }
    if seeds.tls:
        kwargs["ssl"] = True
        kwargs["ssl_ca_certs"] = seeds.ca_certs
        kwargs["ssl_cert_reqs"] = "required" if seeds.verify else "none"
        kwargs["ssl_check_hostname"] = seeds.verify
    return kwargs


def _wait(client: Redis, key: str, replicas: int, deadline: float) -> int:
    """
    Write ``key`` and C{WAIT} for ``replicas`` on one connection of
    ``client``; return the replicas that acknowledged.
    """
    left = deadline - time.monotonic() - _WAIT_MARGIN
    if left <= 0.001:
        raise NotConfirmed("no time left to wait for the replicas")
    pipe = client.pipeline(transaction=False)
    pipe.set(key, b"1", px=_BARRIER_MS)
    # WAIT's timeout 0 would block forever: at least 1 ms
    pipe.execute_command("WAIT", replicas, max(1, int(left * 1000)))
    _, acked = pipe.execute(raise_on_error=True)
    return int(acked)


class ClusterBackend(Backend):
    """
    A L{RedisCluster} from seed nodes; replica counts from C{CLUSTER
    SHARDS}.

    @param barriers: keys to write before a C{WAIT}, spread over the slots
        (each primary serves some of them).
    """

    def __init__(self, seeds: RedisSeeds, timeout: float, barriers: Sequence[str]) -> None:
        self._kwargs = _connection_kwargs(seeds, timeout)
        self._barriers = list(barriers)
        self.client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in seeds.hosts],
            retry=_retry(timeout),
            # a slot map with a failed primary's slots still in it is usable:
            # the other slots keep answering while a replica is promoted
            require_full_coverage=False,
            # every MOVED patches the slot; the whole map is re-read on the
            # second (a reshard moves many slots)
            reinitialize_steps=2,
            topology_refresh_min_interval=0.1,
            **self._kwargs,
        )
        self._replicas: dict[tuple[str, int], int] = {}
        self._replicas_at = 0.0
        self._lock = threading.Lock()

    def ping(self) -> None:
        self.client.ping(target_nodes=RedisCluster.RANDOM)

    def primaries(self) -> list[Any]:
        return list(self.client.get_primaries())

    def scan(self, node: Any, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        next_cursor, keys = node.redis_connection.scan(cursor, match=match, count=count)
        return int(next_cursor), list(keys)

    def replicas(self, node: ClusterNode, refresh: bool = False) -> int:
        """
        Return the replicas C{CLUSTER SHARDS} lists for ``node`` and not as
        failed (a replica still loading counts: it will acknowledge).

        @raise LookupError: the cluster does not list ``node`` as a primary.
        """
        with self._lock:
            if refresh or time.monotonic() - self._replicas_at > REPLICAS_TTL:
                self._replicas = self._read_shards()
                self._replicas_at = time.monotonic()
            counts = self._replicas
        try:
            return counts[(node.host, int(node.port))]
        except KeyError:
            raise LookupError(f"{node.name} is not a primary the cluster lists") from None

    def _read_shards(self) -> dict[tuple[str, int], int]:
        counts: dict[tuple[str, int], int] = {}
        for shard in self.client.execute_command("CLUSTER SHARDS"):
            primary = None
            replicas = 0
            for n in shard["nodes"]:
                role, health = _text(n.get(b"role")), _text(n.get(b"health"))
                if role == "master" and health == "online":
                    primary = n
                elif role == "replica" and health != "failed":
                    replicas += 1
            if primary is not None:
                port = int(primary[b"port"] if b"port" in primary else primary[b"tls-port"])
                for name in (b"ip", b"endpoint", b"hostname"):
                    if primary.get(name):
                        counts[(_text(primary[name]), port)] = replicas
        return counts

    def placement(self, keys: Sequence[str]) -> set[str]:
        names = set()
        for k in keys:
            try:
                names.add(self.client.get_node_from_key(k).name)
            except RedisError:
                pass  # a slot not covered now: where it is written is confirmed after
        return names

    def confirm(self, keys: Sequence[str], deadline: float, before: Any = None) -> int:
        pending = set(before or ()) | self.placement(keys)
        done: set[str] = set()
        waited = 0
        while pending:
            name = pending.pop()
            if name in done:
                continue
            waited += self._confirm_node(name, deadline, pending)
            done.add(name)
        return waited

    def _confirm_node(self, name: str, deadline: float, pending: set[str]) -> int:
        """
        Confirm the primary ``name`` with a barrier key of a slot it serves;
        a redirection names another node that may hold writes too: it is
        added to ``pending``.  Return 1 if a C{WAIT} was needed, else 0.
        """
        tried: set[str] = set()
        while True:
            node = self.client.get_node(node_name=name)
            barrier = None
            if node is not None:
                for b in self._barriers:
                    if b not in tried and self.client.get_node_from_key(b).name == name:
                        barrier = b
                        break
            try:
                if node is None or barrier is None:
                    raise LookupError(f"{name} serves no slot now")
                need = self.replicas(node)
                if not need:
                    return 0
                acked = _wait(node.redis_connection, barrier, need, deadline)
                if acked < need:
                    # a replica may have failed meanwhile: the listing decides
                    need = self.replicas(node, refresh=True)
                    if acked < need:
                        raise NotConfirmed(f"{acked} of {need} replicas of {name} acknowledged", shortfall=True)
                return 1
            except NotConfirmed:
                raise
            except (AskError, MovedError) as e:
                # the barrier's slot is migrating (ASK) or moved: the other
                # node may hold writes of this purge; this one is confirmed
                # with another of its slots
                pending.add(f"{e.host}:{e.port}")
                tried.add(barrier or "")
                if isinstance(e, MovedError):
                    self._refresh()
            except (RedisError, LookupError, OSError) as e:
                # TRYAGAIN, CLUSTERDOWN, a primary not answering or failed
                # over: the slot map again, then this node again, while
                # there is time (a dead one never confirms)
                if time.monotonic() + 0.05 > deadline:
                    raise NotConfirmed(f"{name}: {type(e).__name__}") from None
                time.sleep(0.02)
                self._refresh()
            if time.monotonic() + 0.05 > deadline:
                raise NotConfirmed(f"{name}: no time left")

    def _refresh(self) -> None:
        try:
            self.client.nodes_manager.initialize()
        except RedisError:
            pass  # the next try says what is wrong
        with self._lock:
            self._replicas_at = 0.0

    def subscriber(self, attempt: int) -> Redis:
        # Classic PUBLISH reaches every node of a cluster, replicas
        # included: any node will do, a different one on each attempt.
        nodes = sorted(self.client.get_nodes(), key=lambda n: n.name)
        node = nodes[attempt % len(nodes)]
        return Redis(host=node.host, port=node.port, retry=Retry(NoBackoff(), 0), **self._kwargs)

    def close(self) -> None:
        self.client.close()


class SentinelBackend(Backend):
    """
    The master that the sentinels name (C{master_for}), followed across a
    failover; replica counts from C{SENTINEL REPLICAS}.

    @param barrier: the barrier key.
    """

    def __init__(self, seeds: RedisSeeds, master: str, timeout: float, barrier: str) -> None:
        self._kwargs = _connection_kwargs(seeds, timeout)
        self._master = master
        self._barrier = barrier
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        if seeds.sentinel_password:
            sentinel_kwargs["password"] = seeds.sentinel_password
        self.sentinel = Sentinel(seeds.hosts, sentinel_kwargs=sentinel_kwargs)
        self.client = self.sentinel.master_for(master, retry=_retry(timeout), db=seeds.db, **self._kwargs)
        self._replicas = 0
        self._replicas_at = 0.0
        self._lock = threading.Lock()

    def ping(self) -> None:
        self.client.ping()

    def primaries(self) -> list[Any]:
        return [None]

    def scan(self, node: Any, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        next_cursor, keys = self.client.scan(cursor, match=match, count=count)
        return int(next_cursor), list(keys)

    def replicas(self, refresh: bool = False) -> int:
        """
        Return the replicas the sentinels list for the master and not as
        down.
        """
        with self._lock:
            if refresh or time.monotonic() - self._replicas_at > REPLICAS_TTL:
                self._replicas = len(self.sentinel.discover_replicas(self._master))
                self._replicas_at = time.monotonic()
            return self._replicas

    def placement(self, keys: Sequence[str]) -> Any:
        # the address the pool last connected to the master at (no I/O)
        return getattr(self.client.connection_pool, "master_address", None)

    def confirm(self, keys: Sequence[str], deadline: float, before: Any = None) -> int:
        try:
            need = self.replicas()
            if need:
                acked = _wait(self.client, self._barrier, need, deadline)
                if acked < need:
                    need = self.replicas(refresh=True)
                    if acked < need:
                        raise NotConfirmed(f"{acked} of {need} replicas of the master acknowledged", shortfall=True)
        except NotConfirmed:
            raise
        except (RedisError, OSError) as e:
            raise NotConfirmed(f"the master: {type(e).__name__}") from None
        if before is not None and self.placement(keys) != before:
            # the writes went to a master that is not the one confirmed
            raise NotConfirmed("the master changed during the purge")
        return 1 if need else 0

    def subscriber(self, attempt: int) -> Redis:
        kwargs = dict(self._kwargs)
        return self.sentinel.master_for(self._master, retry=Retry(NoBackoff(), 0), **kwargs)

    def close(self) -> None:
        self.client.close()
        self.sentinel.close()


def _name(f: Failure) -> str:
    return f.type.__name__ if f.type is not None else "error"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


class ThreadedCommands:
    """
    The commands side of a cluster or sentinel store: a L{Backend} made in
    the background (and made again until it can be), its calls run on a
    L{ThreadPool} of L{THREADS}, PINGed every L{PING_INTERVAL} seconds.

    The same calls as L{apicache.store.redis.connection.RedisCommands}
    (L{execute}, L{eval}, L{ready}), plus L{call} for blocking work and
    L{confirm}.

    @ivar counters: counts ``errors`` and ``timeouts`` (shared with the store).
    """

    def __init__(
        self,
        reactor: IReactorThreads,
        clock: IReactorTime,
        connect: Callable[[], Backend],
        timeout: float,
        counters: MutableMapping[str, int],
        threads: int = THREADS,
    ) -> None:
        self.timeout = timeout
        self.counters = counters
        self.backend: Backend | None = None
        self.answering = False
        self._reactor = reactor
        self._clock = clock
        self._connect = connect
        self._connecting = False
        self._attempts = 0
        self._pings_missed = 0
        self._down_logged = False
        self._shas: dict[str, str] = {}
        self.pool = ThreadPool(minthreads=1, maxthreads=threads, name="apicache-redis")
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock

    # -- life ----------------------------------------------------------------

    def start(self) -> None:
        """
        Start the pool, connect in the background, and PING from then on.
        """
        self.pool.start()
        self._ticker.start(PING_INTERVAL, now=True)

    def stop(self) -> Deferred[None]:
        """
        Stop PINGing, close every connection and stop the pool; fires once
        its threads are done (each call ends within its bounded retries).
        """
        if self._ticker.running:
            self._ticker.stop()
        backend, self.backend = self.backend, None
        self.answering = False
        pool = self.pool

        def shut() -> None:
            if backend is not None:
                try:
                    backend.close()
                except Exception:
                    pass  # closing what is broken
            pool.stop()

        # off the reactor thread: stopping the pool joins its threads
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), shut)

    def ready(self) -> bool:
        """
        Return whether the client is made and Redis answered the last PING.
        """
        return self.backend is not None and self.answering

    def _tick(self) -> None:
        if self.backend is None:
            if not self._connecting:
                self._connecting = True
                d = deferToThreadPool(self._reactor, self.pool, self._connect)
                d.addCallbacks(self._connected, self._not_connected)
            return
        self.call(lambda b: b.ping()).addCallbacks(self._pong, self._no_pong)

    def _connected(self, backend: Backend) -> None:
        self._connecting = False
        if not self._ticker.running:
            backend.close()  # stopped meanwhile
            return
        self.backend = backend
        self.answering = True
        self._down_logged = False
        self._attempts = 0
        log.info("redis commands ready ({kind})", kind=type(backend).__name__)

    def _not_connected(self, f: Failure) -> None:
        self._connecting = False
        if not self._down_logged:
            # once per outage; never the URL (it may hold a password)
            self._down_logged = True
            log.error("redis: could not connect: {error}", error=f.getErrorMessage()[:200] or _name(f))
        self._attempts += 1
        if self._ticker.running and self._attempts < 3:
            # the first few again at once, not a PING_INTERVAL later
            self._clock.callLater(retry_delay(self._attempts), self._tick)

    def _pong(self, _: object) -> None:
        self.answering = True
        self._pings_missed = 0

    def _no_pong(self, f: Failure) -> None:
        self._pings_missed += 1
        if self._pings_missed >= PINGS_BEFORE_RECONNECT:
            self.answering = False

    # -- calls -----------------------------------------------------------------

    def call(self, work: Callable[..., Any], *args: Any, timeout: float | None = None) -> Deferred[Any]:
        """
        Run ``work(backend, *args)`` on the pool.

        The call is bounded by ``timeout`` (default: the store's): the
        Deferred fails with L{StoreUnavailable} then, and a call that has
        not started by then is not run at all.  It also fails with it at
        once when the client is not made yet, and on any Redis error.
        """
        backend = self.backend
        if backend is None:
            self.counters["errors"] += 1
            return fail(StoreUnavailable("redis is not connected"))
        bound = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + bound

        def run() -> Any:
            if time.monotonic() > deadline:
                raise _Expired()
            return work(backend, *args)

        d = deferToThreadPool(self._reactor, self.pool, run)
        return d.addTimeout(bound, self._clock).addErrback(self._failed, bound)

    def _failed(self, f: Failure, bound: float) -> Failure:
        if f.check(TimeoutError, _Expired):
            self.counters["timeouts"] += 1
            return Failure(StoreUnavailable(f"redis did not answer within {bound} s"))
        if f.check(CancelledError):
            return f  # the caller cancelled: not a Redis error
        self.counters["errors"] += 1
        if f.check(StoreUnavailable):
            return f
        return Failure(StoreUnavailable(f"redis: {_name(f)}: {f.getErrorMessage()[:200]}"))

    def execute(self, *args: Any) -> Deferred[Any]:
        """
        Run one Redis command (routed by its keys); see L{call}.
        """
        return self.call(lambda b: b.client.execute_command(*args))

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        """
        Run one Lua script by its SHA, loading it where Redis does not know
        it yet; see L{call}.
        """
        sha = self._sha(script)

        def run(b: Backend) -> Any:
            try:
                return b.client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                return b.client.eval(script, len(keys), *keys, *args)

        return self.call(run)

    def placement(self, keys: Sequence[str]) -> Any:
        """
        Return where ``keys`` are written now (L{Backend.placement}), to
        hand to L{confirm} once written; C{None} while not connected.
        """
        backend = self.backend
        return None if backend is None else backend.placement(keys)

    def eval_many(self, script: str, calls: Sequence[tuple[list[str], list[Any]]]) -> Deferred[list[Any]]:
        """
        Run ``script`` once per ``(keys, args)`` of ``calls`` in one
        pipeline (redis-py's cluster pipeline sends each primary its share
        in one round trip, and follows redirections command by command);
        see L{call}.

        @return: a Deferred firing with the replies in order, an error reply
            as the exception in its place.
        """
        sha = self._sha(script)
        calls = list(calls)

        def run(b: Backend) -> list[Any]:
            replies = _pipeline(b, sha, calls)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                # a primary that never ran it (new, or promoted): load it on
                # every primary, then those again
                b.client.script_load(script)
                for i, r in zip(missing, _pipeline(b, sha, [calls[i] for i in missing]), strict=True):
                    replies[i] = r
            return replies

        return self.call(run)

    def _sha(self, script: str) -> str:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis names scripts so
        return sha

    def confirm(self, keys: Sequence[str], before: Any = None) -> Deferred[int]:
        """
        Fire once the primaries serving ``keys``, now or at ``before`` (a
        L{placement} taken before the writes), have had their writes
        acknowledged by their replicas (L{Backend.confirm}), within the
        store's timeout; errback with L{StoreUnavailable} (a
        L{NotConfirmed}) when not.
        """
        if not keys:
            return succeed(0)
        keys = list(keys)
        # the thread's deadline is the call's; the Deferred's is a bit later,
        # so that WAIT's own answer (0 replicas) is what the caller sees
        deadline = time.monotonic() + self.timeout
        return self.call(lambda b: b.confirm(keys, deadline, before), timeout=self.timeout + 0.05)


def _pipeline(b: Backend, sha: str, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
    pipe = b.client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
    return list(pipe.execute(raise_on_error=False))


class _Expired(Exception):
    """A call whose deadline passed before a thread took it."""


class ThreadedSubscriber:
    """
    The invalidation subscription of a cluster or sentinel store: one
    thread of its own, subscribed to ``channel`` on one node (cluster: any
    node hears every classic PUBLISH; sentinel: the master, found again
    after a failover), handing each message to ``on_message`` in the
    reactor thread.  A subscription that breaks, or that misses
    L{PINGS_BEFORE_RECONNECT} PINGs, is made again (on another node), and
    ``on_change(False)`` then ``on_change(True)`` tell the store: messages
    may have been lost in between.

    @ivar protocol: the live subscription, or C{None} (read in the reactor
        thread only).
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        commands: ThreadedCommands,
        channel: str,
        on_message: Callable[[bytes], None],
        on_change: Callable[[bool], None],
    ) -> None:
        self.protocol: Any = None
        self._reactor = reactor
        self._commands = commands
        self._channel = channel
        self._on_message = on_message
        self._on_change = on_change
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """
        Subscribe, and keep subscribing, in a thread of its own.
        """
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="apicache-redis-pubsub", daemon=True)
        self._thread.start()

    def stop(self) -> Deferred[None]:
        """
        Unsubscribe; fires once the thread is done (within a second).
        """
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return succeed(None)
        reactor: Any = self._reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), thread.join, 5.0)

    def _up(self, pubsub: Any) -> None:
        self.protocol = pubsub
        log.info("redis pubsub subscribed")
        self._on_change(True)

    def _down(self, why: str | None) -> None:
        if self.protocol is not None:
            self.protocol = None
            if why is not None:
                log.warn("redis pubsub connection lost: {why}", why=why)
            self._on_change(False)

    def _run(self) -> None:
        attempt = 0
        logged = False
        while not self._stopping.is_set():
            backend = self._commands.backend
            if backend is None:
                self._stopping.wait(0.05)
                continue
            pubsub = None
            up = False
            try:
                pubsub = backend.subscriber(attempt).pubsub()
                pubsub.subscribe(self._channel)
                confirmed = pubsub.get_message(timeout=PING_INTERVAL)
                if not confirmed or confirmed.get("type") != "subscribe":
                    raise ConnectionError("no subscription confirmed")
                up = True
                logged = False
                self._reactor.callFromThread(self._up, pubsub)
                self._listen(pubsub)
            except Exception as e:
                why = f"{type(e).__name__}: {str(e)[:200]}"
                if up:
                    self._reactor.callFromThread(self._down, why)
                elif not logged:
                    logged = True
                    log.warn("redis pubsub could not subscribe: {why}", why=why)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass  # closing what is broken
            if up and self._stopping.is_set():
                self._reactor.callFromThread(self._down, None)
            attempt += 1
            self._stopping.wait(retry_delay(min(attempt, 4)) if not up else 0)

    def _listen(self, pubsub: Any) -> None:
        last_pong = time.monotonic()
        next_ping = last_pong + PING_INTERVAL
        while not self._stopping.is_set():
            m = pubsub.get_message(timeout=0.1)
            now = time.monotonic()
            if m is not None:
                if m.get("type") == "message":
                    self._reactor.callFromThread(self._on_message, m["data"])
                elif m.get("type") == "pong":
                    last_pong = now
            if now >= next_ping:
                pubsub.ping()
                next_ping = now + PING_INTERVAL
            if now - last_pong > PING_INTERVAL * (PINGS_BEFORE_RECONNECT + 0.5):
                raise ConnectionError(f"no PONG for {now - last_pong:.1f} s")
