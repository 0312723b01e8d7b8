"""
Which Redis client the store should use on Redis Cluster and Sentinel
(issue 22), by measurement: the store's own operations through each
candidate, against a private single node and a private 6-process cluster
(L{apicache.harness.rediscluster}), and what the hit path of twisted.web
pays on the asyncio reactor.

    .venv/bin/python bench/redis_clients.py [--rounds 3] [--seconds 2] [--concurrency 32]
        [--candidates txredisapi,redispy-async,...] [--ops hit,miss,lock,pubsub,spubsub]
        [--targets single,cluster] [--web-only | --no-web] [--json out.json]

Candidates (each run in its own process, since the reactor is per process):

    txredisapi      today's client, default (epoll) reactor, single node only
    redispy-async   redis-py's asyncio Redis / RedisCluster, Twisted on the asyncio reactor
    redispy-thread  redis-py's blocking Redis / RedisCluster on the reactor's thread pool (epoll reactor)
    coredis         coredis (anyio), Twisted on the asyncio reactor
    glide           valkey-glide (Rust core), Twisted on the asyncio reactor
    redispy-bridge  redis-py's asyncio clients on an asyncio loop in one thread beside the epoll reactor
    glide-bridge    valkey-glide the same way

Operations, as the store issues them (L{apicache.store.redis.store}), each
driven from Twisted code awaiting Deferreds (the bridge is part of the
cost), ``--concurrency`` in flight for ``--seconds``:

    hit     one EVALSHA of GET_OR_LOCK finding a 1 KB value (a hit in Redis, a miss in the process)
    miss    GET_OR_LOCK (takes the lock), MGET of the generations (begin), EVALSHA PUT of 1 KB
    lock    GET_OR_LOCK on a key another instance holds the lock of: one coalescing poll
    pubsub  PUBLISH -> the subscriber's callback, one message at a time: latency p50/p99
    spubsub the same with SPUBLISH / SSUBSCRIBE (cluster only)

In cluster mode every key of one operation carries the same hash tag, as
the cluster key layout will.  Rounds interleave the candidates (the
machine is shared) and the tables give medians over rounds.  The hit path:
a tiny twisted.web resource answering fixed bytes on each reactor, loaded by
``wrk`` pinned to another core than the server (``taskset``) when both exist.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CANDIDATES = ["txredisapi", "redispy-async", "redispy-bridge", "redispy-thread", "coredis", "glide", "glide-bridge"]
ASYNCIO = {"redispy-async", "coredis", "glide"}
OPS = ["hit", "miss", "lock", "pubsub", "spubsub"]
VALUE = bytes(random.Random(1).getrandbits(8) for _ in range(1024))
PREFIX = "bench"
HOT_KEYS = 64


# -- the worker: one candidate, one target, one operation ----------------------


def key_names(resource: str) -> dict[str, str]:
    """
    Return the keys of one resource, every one with the resource as its
    hash tag (one slot).
    """
    tag = "{" + resource + "}"
    names = {c: f"{PREFIX}:{c}:{tag}" for c in "rtgGTAe"}
    names["e"] += ":v"
    names["l"] = f"{PREFIX}:l:{tag}:v"
    names["n"] = f"{PREFIX}:n:{tag}:v"
    # the key's list of variants (issue 20): read when it has no entry
    names["v"] = f"{PREFIX}:v:{tag}:v"
    names["seq"] = f"{PREFIX}:seq:{tag}"
    return names


class Adapter:
    """
    A candidate client as the store would use it: every call returns a
    Deferred (Twisted code awaits it).
    """

    async def connect(self, mode: str, url: str) -> None:
        raise NotImplementedError

    def evalsha(self, sha: str, text: str, keys: list[str], args: list[Any]) -> Any:
        raise NotImplementedError

    def command(self, *args: Any) -> Any:
        raise NotImplementedError

    async def subscribe(self, channel: str, callback: Callable[[bytes], None], sharded: bool) -> None:
        raise NotImplementedError

    def publish(self, channel: str, message: bytes, sharded: bool) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        pass


def _hostports(url: str) -> list[tuple[str, int]]:
    netloc = url.split("://", 1)[1].split("/", 1)[0]
    out = []
    for hp in netloc.split(","):
        h, _, p = hp.rpartition(":")
        out.append((h, int(p)))
    return out


class AsyncioThread:
    """
    The bridge: an asyncio loop on a thread of its own, next to the default
    (epoll) reactor.  Calls cross with C{run_coroutine_threadsafe}; results
    come back with C{callFromThread}.
    """

    def __init__(self) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="asyncio-bridge").start()

    def call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        import asyncio

        from twisted.internet import reactor
        from twisted.internet.defer import Deferred

        async def run() -> Any:
            return await make()

        d: Deferred[Any] = Deferred()

        def fire(f: Any) -> None:
            e = f.exception()
            if e is None:
                d.callback(f.result())
            else:
                d.errback(e)

        fut = asyncio.run_coroutine_threadsafe(run(), self.loop)
        fut.add_done_callback(lambda f: reactor.callFromThread(fire, f))
        return d


#: set in a worker of a ``-bridge`` candidate
BRIDGE: AsyncioThread | None = None


def _asyncio_call(make: Callable[[], Awaitable[Any]]) -> Any:
    """
    Run an asyncio coroutine from Twisted code: on the asyncio reactor's own
    loop, or across the bridge; return a Deferred.
    """
    import asyncio

    from twisted.internet.defer import Deferred

    if BRIDGE is not None:
        return BRIDGE.call(make)

    async def run() -> Any:
        return await make()

    return Deferred.fromFuture(asyncio.ensure_future(run()))


def _spawn(make: Callable[[], Awaitable[Any]]) -> Any:
    """
    Start a background asyncio task (on the bridge's loop if there is one);
    return something with C{cancel()}.
    """
    import asyncio

    if BRIDGE is not None:
        return asyncio.run_coroutine_threadsafe(make(), BRIDGE.loop)  # type: ignore[arg-type]
    return asyncio.ensure_future(make())


def _in_reactor(callback: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """
    Return ``callback`` made safe to call from the bridge's thread.
    """
    if BRIDGE is None:
        return callback
    from twisted.internet import reactor

    return lambda data: reactor.callFromThread(callback, data)


class TxRedisApi(Adapter):
    """
    The store's own connection classes (txredisapi underneath).
    """

    async def connect(self, mode: str, url: str) -> None:
        from collections import defaultdict

        from twisted.internet import reactor

        from apicache.store.redis.address import parse_redis_url
        from apicache.store.redis.connection import RedisCommands

        if mode != "single":
            raise NotImplementedError("txredisapi knows no cluster")
        self.reactor = reactor
        self.address = parse_redis_url(url)
        self.cmds = RedisCommands(reactor, reactor, self.address, 5.0, defaultdict(int))
        self.cmds.start()
        self.subs: list[Any] = []
        await _until(self.cmds.ready)

    def evalsha(self, sha: str, text: str, keys: list[str], args: list[Any]) -> Any:
        return self.cmds.eval(text, keys, args)

    def command(self, *args: Any) -> Any:
        return self.cmds.execute(*args)

    async def subscribe(self, channel: str, callback: Callable[[bytes], None], sharded: bool) -> None:
        from apicache.store.redis.connection import PubSubProtocol, RedisConnection

        if sharded:
            raise NotImplementedError("no SSUBSCRIBE in txredisapi")
        c = RedisConnection(
            "pubsub", self.reactor, self.reactor, self.address,
            lambda clock: PubSubProtocol(clock, callback), prepare=lambda p: p.subscribe(channel),
        )
        c.start()
        self.subs.append(c)
        await _until(lambda: c.protocol is not None)

    def publish(self, channel: str, message: bytes, sharded: bool) -> Any:
        return self.cmds.execute("PUBLISH", channel, message)

    async def close(self) -> None:
        await self.cmds.stop()
        for c in self.subs:
            await c.stop()


class RedisPyAsync(Adapter):
    """
    redis-py's asyncio clients; Twisted runs on the asyncio reactor.
    """

    async def connect(self, mode: str, url: str) -> None:
        import redis.asyncio as ra
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        self.mode = mode
        if mode == "cluster":
            nodes = [ClusterNode(h, p) for h, p in _hostports(url)]
            self.r: Any = RedisCluster(startup_nodes=nodes, max_connections=64)
            await _asyncio_call(self.r.initialize)
        else:
            self.r = ra.Redis.from_url(url, max_connections=64)
        self.tasks: list[Any] = []
        self.pubsubs: list[Any] = []

    def evalsha(self, sha: str, text: str, keys: list[str], args: list[Any]) -> Any:
        return _asyncio_call(lambda: self.r.evalsha(sha, len(keys), *keys, *args))

    def command(self, *args: Any) -> Any:
        if args[0] == "MGET":
            return _asyncio_call(lambda: self.r.mget(list(args[1:])))
        return _asyncio_call(lambda: self.r.execute_command(*args))

    async def subscribe(self, channel: str, callback: Callable[[bytes], None], sharded: bool) -> None:
        ps = self.r.pubsub()
        self.pubsubs.append(ps)
        callback = _in_reactor(callback)
        if sharded:
            if self.mode != "cluster":
                raise NotImplementedError("sharded pub/sub: cluster only here")
            await _asyncio_call(lambda: ps.ssubscribe(channel))
            get = ps.get_sharded_message
        else:
            await _asyncio_call(lambda: ps.subscribe(channel))
            get = ps.get_message

        async def loop() -> None:
            while True:
                m = await get(ignore_subscribe_messages=True, timeout=1.0)
                if m and m.get("type") in ("message", "smessage"):
                    callback(m["data"])

        self.tasks.append(_spawn(loop))

    def publish(self, channel: str, message: bytes, sharded: bool) -> Any:
        if sharded:
            return _asyncio_call(lambda: self.r.spublish(channel, message))
        return _asyncio_call(lambda: self.r.publish(channel, message))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for ps in self.pubsubs:
            await _asyncio_call(ps.aclose)
        await _asyncio_call(self.r.aclose)


class RedisPyThread(Adapter):
    """
    redis-py's blocking clients on the reactor's thread pool (epoll reactor).
    """

    async def connect(self, mode: str, url: str) -> None:
        import redis
        from redis.cluster import ClusterNode, RedisCluster
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThread

        self.reactor = reactor
        self.defer = deferToThread
        self.mode = mode
        if mode == "cluster":
            self.r: Any = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in _hostports(url)])
        else:
            self.r = redis.Redis.from_url(url, max_connections=64)
        self.running = True
        self.threads: list[Any] = []

    def evalsha(self, sha: str, text: str, keys: list[str], args: list[Any]) -> Any:
        return self.defer(self.r.evalsha, sha, len(keys), *keys, *args)

    def command(self, *args: Any) -> Any:
        if args[0] == "MGET":
            return self.defer(self.r.mget, list(args[1:]))
        return self.defer(self.r.execute_command, *args)

    async def subscribe(self, channel: str, callback: Callable[[bytes], None], sharded: bool) -> None:
        import threading

        ps = self.r.pubsub()
        if sharded:
            if self.mode != "cluster":
                raise NotImplementedError("sharded pub/sub: cluster only here")
            ps.ssubscribe(channel)
            get = ps.get_sharded_message
        else:
            ps.subscribe(channel)
            get = ps.get_message

        def loop() -> None:
            while self.running:
                m = get(ignore_subscribe_messages=True, timeout=0.5)
                if m and m.get("type") in ("message", "smessage"):
                    self.reactor.callFromThread(callback, m["data"])
            ps.close()

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        self.threads.append(t)
        from twisted.internet.task import deferLater

        await deferLater(self.reactor, 0.2, lambda: None)

    def publish(self, channel: str, message: bytes, sharded: bool) -> Any:
        if sharded:
            return self.defer(self.r.spublish, channel, message)
        return self.defer(self.r.publish, channel, message)

    async def close(self) -> None:
        self.running = False
        for t in self.threads:
            t.join(2)
        self.r.close()


class CoRedis(Adapter):
    """
    coredis: an anyio client, whose context must stay open in one asyncio
    task for as long as it is used.
    """

    async def connect(self, mode: str, url: str) -> None:
        import asyncio

        import coredis

        self.mode = mode
        if mode == "cluster":
            self.r: Any = coredis.RedisCluster(startup_nodes=[{"host": h, "port": p} for h, p in _hostports(url)])
        else:
            self.r = coredis.Redis.from_url(url)
        self.ready: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self.done = asyncio.Event()
        self.subscriptions: list[tuple[str, Callable[[bytes], None], bool, asyncio.Future[None]]] = []
        self.wake = asyncio.Event()

        async def own() -> None:
            from contextlib import AsyncExitStack

            async with AsyncExitStack() as stack:
                await stack.enter_async_context(self.r)
                self.ready.set_result(None)
                while not self.done.is_set():
                    await self.wake.wait()
                    self.wake.clear()
                    while self.subscriptions:
                        channel, callback, sharded, fut = self.subscriptions.pop()

                        def handler(m: Any, callback: Callable[[bytes], None] = callback) -> None:
                            callback(m["data"])

                        if sharded:
                            ps = self.r.sharded_pubsub(channel_handlers={channel: handler}, ignore_subscribe_messages=True)
                        else:
                            ps = self.r.pubsub(channel_handlers={channel: handler}, ignore_subscribe_messages=True)
                        await stack.enter_async_context(ps)
                        fut.set_result(None)

        self.owner = asyncio.ensure_future(own())
        from twisted.internet.defer import Deferred

        await Deferred.fromFuture(self.ready)

    def evalsha(self, sha: str, text: str, keys: list[str], args: list[Any]) -> Any:
        return _asyncio_call(lambda: self.r.evalsha(sha, keys=keys, args=args))

    def command(self, *args: Any) -> Any:
        if args[0] == "MGET":
            return _asyncio_call(lambda: self.r.mget(list(args[1:])))
        if args[0] == "SET":
            _, k, v, _px, ms = args
            return _asyncio_call(lambda: self.r.set(k, v, px=ms))
        raise NotImplementedError(args[0])

    async def subscribe(self, channel: str, callback: Callable[[bytes], None], sharded: bool) -> None:
        import asyncio

        from twisted.internet.defer import Deferred

        if sharded and self.mode != "cluster":
            raise NotImplementedError("sharded pub/sub: cluster only here")
        fut: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self.subscriptions.append((channel, callback, sharded, fut))
        self.wake.set()
        await Deferred.fromFuture(fut)
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.2, lambda: None)

    def publish(self, channel: str, message: bytes, sharded: bool) -> Any:
        if sharded:
            return _asyncio_call(lambda: self.r.spublish(channel, message))
        return _asyncio_call(lambda: self.r.publish(channel, message))

    async def close(self) -> None:
        from twisted.internet.defer import Deferred

        self.done.set()
        self.wake.set()
        await Deferred.fromFuture(self.owner)


class Glide(Adapter):
    """
    valkey-glide: a Rust core behind an asyncio API; subscriptions are given
    when the client is made.
    """

    async def connect(self, mode: str, url: str) -> None:
        self.mode = mode
        self.url = url
        self.clients: list[Any] = []
        self.r = await self._make(None)
        from glide import Script

        self.scripts: dict[str, Any] = {}
        self.Script = Script

    async def _make(self, subscription: tuple[str, Callable[[bytes], None], bool] | None) -> Any:
        from glide import (
            GlideClient,
            GlideClientConfiguration,
            GlideClusterClient,
            GlideClusterClientConfiguration,
            NodeAddress,
        )

        addresses = [NodeAddress(h, p) for h, p in _hostports(self.url)]
        subs = None
        if subscription is not None:
            channel, callback, sharded = subscription

            deliver = _in_reactor(callback)

            def on_message(msg: Any, context: Any) -> None:
                deliver(msg.message)

            if self.mode == "cluster":
                modes = GlideClusterClientConfiguration.PubSubChannelModes
                subs = GlideClusterClientConfiguration.PubSubSubscriptions(
                    channels_and_patterns={modes.Sharded if sharded else modes.Exact: {channel}},
                    callback=on_message, context=None,
                )
            else:
                if sharded:
                    raise NotImplementedError("sharded pub/sub: cluster only here")
                smodes = GlideClientConfiguration.PubSubChannelModes
                subs = GlideClientConfiguration.PubSubSubscriptions(
                    channels_and_patterns={smodes.Exact: {channel}}, callback=on_message, context=None,
                )
        if self.mode == "cluster":
            config: Any = GlideClusterClientConfiguration(addresses, request_timeout=5000, pubsub_subscriptions=subs)
            client = await _asyncio_call(lambda: GlideClusterClient.create(config))
        else:
            config = GlideClientConfiguration(addresses[:1], request_timeout=5000, pubsub_subscriptions=subs)
            client = await _asyncio_call(lambda: GlideClient.create(config))
        self.clients.append(client)
        return client

    def evalsha(self, sha: str, text: str, keys: list[str], args: list[Any]) -> Any:
        script = self.scripts.get(sha)
        if script is None:
            script = self.scripts[sha] = self.Script(text)
        return _asyncio_call(lambda: self.r.invoke_script(script, keys=keys, args=[str(a) if isinstance(a, int) else a for a in args]))

    def command(self, *args: Any) -> Any:
        if args[0] == "MGET":
            return _asyncio_call(lambda: self.r.mget(list(args[1:])))
        return _asyncio_call(lambda: self.r.custom_command([str(a) if isinstance(a, int) else a for a in args]))

    async def subscribe(self, channel: str, callback: Callable[[bytes], None], sharded: bool) -> None:
        await self._make((channel, callback, sharded))
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.2, lambda: None)

    def publish(self, channel: str, message: bytes, sharded: bool) -> Any:
        if self.mode == "cluster":
            return _asyncio_call(lambda: self.r.publish(message, channel, sharded=sharded))
        return _asyncio_call(lambda: self.r.publish(message, channel))

    async def close(self) -> None:
        for c in self.clients:
            await _asyncio_call(c.close)


ADAPTERS: dict[str, type[Adapter]] = {
    "txredisapi": TxRedisApi,
    "redispy-async": RedisPyAsync,
    "redispy-thread": RedisPyThread,
    "coredis": CoRedis,
    "glide": Glide,
    "redispy-bridge": RedisPyAsync,
    "glide-bridge": Glide,
}


async def _until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("not ready")
        await deferLater(reactor, 0.01, lambda: None)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _closed_loop(op: Callable[[int, int], Awaitable[Any]], seconds: float, concurrency: int) -> dict[str, float]:
    from twisted.internet.defer import Deferred, gatherResults

    latencies: list[float] = []
    counters = [0] * concurrency
    phase = {"record": False, "stop": False}

    async def worker(i: int) -> None:
        while not phase["stop"]:
            n = counters[i]
            counters[i] += 1
            t0 = time.perf_counter()
            await op(i, n)
            if phase["record"]:
                latencies.append(time.perf_counter() - t0)

    from twisted.internet import reactor

    def start() -> None:
        phase["record"] = True
        marks["t0"] = time.perf_counter()
        cpu["t0"] = time.process_time()

    def stop() -> None:
        marks["t1"] = time.perf_counter()
        cpu["t1"] = time.process_time()
        phase["record"] = False
        phase["stop"] = True

    marks: dict[str, float] = {}
    cpu: dict[str, float] = {}
    warm = min(0.5, seconds / 4)
    reactor.callLater(warm, start)
    reactor.callLater(warm + seconds, stop)
    await gatherResults([Deferred.fromCoroutine(worker(i)) for i in range(concurrency)])
    elapsed = marks["t1"] - marks["t0"]
    return {
        "ops_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 0.5) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        # the client process's own CPU per operation: what a core pays
        "cpu_us_per_op": (cpu["t1"] - cpu["t0"]) / max(1, len(latencies)) * 1e6,
    }


async def _pubsub(client: Adapter, sharded: bool, messages: int) -> dict[str, float]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    channel = f"{PREFIX}:inv:{uuid.uuid4().hex[:6]}"
    pending: dict[str, Any] = {}

    def received(data: bytes) -> None:
        d = pending.pop("d", None)
        if d is not None and data == pending.get("expect"):
            d.callback(time.perf_counter())

    await client.subscribe(channel, received, sharded)
    latencies = []
    for i in range(messages + 20):
        d: Deferred[float] = Deferred()
        d.addTimeout(2.0, reactor)
        message = f"{i}:{uuid.uuid4().hex}".encode()
        pending["d"] = d
        pending["expect"] = message
        t0 = time.perf_counter()
        await client.publish(channel, message, sharded)
        t1 = await d
        if i >= 20:
            latencies.append(t1 - t0)
    return {
        "p50_ms": _percentile(latencies, 0.5) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "ops_per_s": len(latencies) / sum(latencies),
    }


async def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    from apicache.store.redis import scripts

    client = ADAPTERS[args.worker]()
    await client.connect(args.mode, args.url)
    run = args.run
    instance = uuid.uuid4().hex
    try:
        if args.op in ("pubsub", "spubsub"):
            return await _pubsub(client, args.op == "spubsub", args.messages)
        if args.op == "hit":
            hot = [key_names(f"{run}:hit:{i}") for i in range(HOT_KEYS)]
            for k in hot:
                await client.command("SET", k["e"], VALUE, "PX", 600000)

            async def hit(i: int, n: int) -> None:
                k = hot[(i * 7 + n) % HOT_KEYS]
                reply = await client.evalsha(args.sha_get, scripts.GET_OR_LOCK, [k["e"], k["l"], k["n"], k["v"]],
                                             [instance, 1000, PREFIX, "t1", ""])
                if int(reply[0]) != 0 or bytes(reply[1]) != VALUE:
                    raise AssertionError(f"not a hit: {reply!r:.80}")

            return await _closed_loop(hit, args.seconds, args.concurrency)
        if args.op == "lock":
            held = [key_names(f"{run}:lock:{i}") for i in range(HOT_KEYS)]
            for k in held:
                await client.command("SET", k["l"], "another-instance", "PX", 600000)

            async def poll(i: int, n: int) -> None:
                k = held[(i * 7 + n) % HOT_KEYS]
                reply = await client.evalsha(args.sha_get, scripts.GET_OR_LOCK, [k["e"], k["l"], k["n"], k["v"]],
                                             [instance, 1000, PREFIX, "t1", ""])
                if int(reply[0]) != 2:
                    raise AssertionError(f"not a wait: {reply!r:.80}")

            return await _closed_loop(poll, args.seconds, args.concurrency)

        async def miss(i: int, n: int) -> None:
            k = key_names(f"{run}:miss:{i}:{n}")
            reply = await client.evalsha(args.sha_get, scripts.GET_OR_LOCK, [k["e"], k["l"], k["n"], k["v"]],
                                         [instance, 1000, PREFIX, "t1", ""])
            if int(reply[0]) != 1:
                raise AssertionError(f"not ours to fetch: {reply!r:.80}")
            gens = await client.command("MGET", k["g"], k["G"], k["T"], k["A"], k["seq"])
            gens = [g if g is not None else b"0" for g in gens[:4]]
            stored = await client.evalsha(
                args.sha_put, scripts.PUT,
                [k["e"], k["r"], k["t"], k["g"], k["G"], k["T"], k["A"], k["l"], k["n"], k["e"], k["n"], k["v"]],
                [*gens, VALUE, 30000, instance, "", 16],
            )
            if int(stored) != 1:
                raise AssertionError("not stored")

        return await _closed_loop(miss, args.seconds, args.concurrency)
    finally:
        await client.close()


def worker_main(args: argparse.Namespace) -> None:
    global BRIDGE
    if args.worker.endswith("-bridge"):
        BRIDGE = AsyncioThread()
    if args.worker in ASYNCIO:
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    out: dict[str, Any] = {}

    def done(result: Any) -> None:
        if isinstance(result, dict):
            out.update(result)
        else:
            out["error"] = result.getErrorMessage()[:300] if hasattr(result, "getErrorMessage") else str(result)
        reactor.stop()

    def go() -> None:
        Deferred.fromCoroutine(run_worker(args)).addBoth(done)

    reactor.callWhenRunning(go)
    reactor.run()
    print(json.dumps(out))


# -- the hit path on each reactor ------------------------------------------------


def web_main(kind: str, port: int) -> None:
    """
    Serve fixed bytes on ``port`` with twisted.web on reactor ``kind``.
    """
    if kind == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    body = b'{"id": 42, "name": "object 42", "cached": true}' * 20

    class Fixed(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"application/json")
            return body

    site = Site(Fixed())
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()


def web_round(kind: str, seconds: float, connections: int) -> dict[str, float]:
    from apicache.harness.rediscluster import free_port, wait_for

    port = free_port()
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    server = subprocess.Popen([*pin, sys.executable, __file__, "--serve-web", kind, "--port", str(port)])
    try:
        import socket

        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5).close() or True, 10, "web server")
        url = f"http://127.0.0.1:{port}/object"
        if shutil.which("wrk"):
            return _wrk(server.pid, url, seconds, connections, [], bool(pin))
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    finally:
        server.kill()
        server.wait()


APICACHE_CONFIG = """
[server]
api_keys = ["bench-key"]
access_log = false
log_level = "warn"

[store]
backend = "memory"

[upstream]
base_url = "http://127.0.0.1:{upstream}/api"

[[routes]]
type = "object"
path = "/server/object(<id>)/header"
upstream = "/object({{id}})/header"
ttl = 300
"""


def apicache_round(kind: str, seconds: float, connections: int) -> dict[str, float]:
    """
    The daemon's own hit path (memory store, one cached key) under
    ``twistd --reactor=<kind>``, loaded by ``wrk``.
    """
    import http.client
    import socket

    from apicache.harness.rediscluster import free_port, wait_for

    upstream_port, port = free_port(), free_port()
    directory = tempfile.mkdtemp(prefix="apicache-bench-reactor-")
    config = os.path.join(directory, "apicache.toml")
    with open(config, "w") as f:
        f.write(APICACHE_CONFIG.format(upstream=upstream_port))
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-web", "epoll", "--port", str(upstream_port)])
    reactor_arg = [] if kind == "epoll" else [f"--reactor={kind}"]
    log = open(os.path.join(directory, "daemon.log"), "ab")
    daemon = subprocess.Popen(
        [*pin, twistd, *reactor_arg, "-n", "--pidfile=", "apicache", "--config", config,
         "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    path = "/server/object(42)/header"
    headers = {"api-key": "bench-key", "org_id": "t1"}

    def get() -> str | None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            r.read()
            return r.getheader("x-cache") if r.status == 200 else None
        finally:
            c.close()

    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", upstream_port), timeout=0.5).close() or True, 10, "upstream")
        wait_for(get, 30, "apicache answering 200")
        if get() != "HIT":
            raise RuntimeError("the second request was not a HIT")
        return _wrk(daemon.pid, f"http://127.0.0.1:{port}{path}", seconds, connections,
                    [f"{k}: {v}" for k, v in headers.items()], bool(pin))
    finally:
        for proc in (daemon, upstream):
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def _wrk(pid: int, url: str, seconds: float, connections: int, headers: list[str], pin: bool) -> dict[str, float]:
    wpin = ["taskset", "-c", "1"] if pin else []
    hargs = [a for h in headers for a in ("-H", h)]
    cpu0 = _cpu_seconds(pid)
    out = subprocess.run([*wpin, "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", *hargs, url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu = _cpu_seconds(pid) - cpu0
    rps = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
    total = int(next(line.split()[0] for line in out.splitlines() if "requests in" in line))
    lat = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.strip().startswith(("50%", "99%"))}
    return {"rps": rps, "p50_ms": _ms(lat.get("50%", "nan")), "p99_ms": _ms(lat.get("99%", "nan")),
            # the server's own CPU per request: what the hit path pays, whatever else runs
            "cpu_us_per_op": cpu / max(1, total) * 1e6}


def _cpu_seconds(pid: int) -> float:
    # utime + stime of the process (Linux), in seconds
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float("nan")


# -- what the chosen client does on a real cluster and real sentinels ----------------


def _load_thread(op: Callable[[], Any], stop: Any, log: dict[str, Any]) -> None:
    ok = err = 0
    kinds: dict[str, int] = {}
    last = None
    while not stop.is_set():
        try:
            op()
            ok += 1
        except Exception as e:
            err += 1
            kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
            last = time.monotonic()
        time.sleep(0.01)
    log.update(ok=ok, err=err, kinds=kinds, last=last)


def features() -> list[str]:
    """
    Check, with redis-py's blocking clients, what the store will rely on:
    PUBLISH from a script reaches a subscriber on another node; C{WAIT} on
    the connection that wrote counts the replicas (and times out against a
    frozen one); sharded pub/sub; a kill -9 failover (cluster and sentinel)
    followed, with the errors callers saw; a reshard under multi-key script
    load.  Returns the findings, one line each.
    """
    import threading

    from redis import Redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.sentinel import Sentinel

    from apicache.harness.rediscluster import RedisCluster as Cluster
    from apicache.harness.rediscluster import RedisSentinels

    out = []
    c = Cluster(tempfile.mkdtemp(prefix="apicache-features-"), node_timeout_ms=1000).start()
    try:
        rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in c.nodes], socket_timeout=0.5)
        key = "{b1}:gen"
        owner = c.primary_for(key)
        other = next(n for n in c.primaries() if n is not owner)
        ps = Redis(port=other.port).pubsub()
        ps.subscribe("P:inv")
        ps.get_message(timeout=1)
        rc.eval("redis.call('INCR', KEYS[1]); redis.call('PUBLISH', 'P:inv', 'hello'); return 1", 1, key)
        m = ps.get_message(ignore_subscribe_messages=True, timeout=2)
        out.append(f"PUBLISH inside a script on node {owner.port} reached a subscriber on node {other.port}: {m is not None and m['data'] == b'hello'}")
        # WAIT counts the writes of its own connection: a pipeline on the primary's connection
        node = rc.get_node_from_key(key)
        p = node.redis_connection.pipeline(transaction=False)
        p.eval("return redis.call('INCR', KEYS[1])", 1, key)
        p.execute_command("WAIT", 1, 300)
        out.append(f"EVAL + WAIT 1 300 in one pipeline on the primary's connection -> {p.execute()}")
        out.append(f"WAIT through the cluster client (sent to every primary, summed) -> {rc.execute_command('WAIT', 1, 100)}")
        [replica] = c.replicas_of(owner)
        replica.pause()
        t0 = time.monotonic()
        p = node.redis_connection.pipeline(transaction=False)
        p.eval("return redis.call('INCR', KEYS[1])", 1, key)
        p.execute_command("WAIT", 1, 300)
        acks = p.execute()
        out.append(f"the same with the replica frozen (SIGSTOP) -> {acks} after {time.monotonic() - t0:.2f} s")
        replica.resume()
        sps = rc.pubsub()
        sps.ssubscribe("P:inv:{b1}")
        sps.get_sharded_message(timeout=0.5)
        rc.spublish("P:inv:{b1}", "m1")
        sm = None
        for _ in range(20):
            sm = sps.get_sharded_message(ignore_subscribe_messages=True, timeout=0.1)
            if sm:
                break
        out.append(f"SSUBSCRIBE/SPUBLISH through the cluster client: {sm is not None and sm['data'] == b'm1'}")
        # a reshard under multi-key script load
        tags = [f"b{i}" for i in range(200)]
        for t in tags:
            pipe = rc.pipeline(transaction=False)
            for j in range(300):
                pipe.set(f"{{{t}}}:fill:{j}", "x" * 100)
            pipe.execute()
        src = c.primary_for("{b0}:x")
        dst = next(n for n in c.primaries() if n is not src)
        ids = {i.port: i.node_id for i in c.topology()}
        script = rc.register_script("redis.call('SET', KEYS[1], ARGV[1]); redis.call('INCR', KEYS[2]); return redis.call('GET', KEYS[1])")
        stop = threading.Event()
        logs: list[dict[str, Any]] = []
        threads = []
        for i in range(4):
            log: dict[str, Any] = {}
            logs.append(log)

            def op(i: int = i, n: list[int] = [0]) -> None:  # noqa: B006
                n[0] += 1
                t = tags[(i * 31 + n[0]) % len(tags)]
                if script(keys=[f"{{{t}}}:a", f"{{{t}}}:b"], args=["v"]) != b"v":
                    raise AssertionError("wrong reply")

            th = threading.Thread(target=_load_thread, args=(op, stop, log))
            th.start()
            threads.append(th)
        time.sleep(0.5)
        t0 = time.monotonic()
        res = subprocess.run(["redis-cli", "--cluster", "reshard", src.address, "--cluster-from", ids[src.port],
                              "--cluster-to", ids[dst.port], "--cluster-slots", "2000", "--cluster-yes",
                              "--cluster-pipeline", "10"], capture_output=True, timeout=300)
        took = time.monotonic() - t0
        time.sleep(0.5)
        stop.set()
        for th in threads:
            th.join()
        errors: dict[str, int] = {}
        for log in logs:
            for k, v in log["kinds"].items():
                errors[k] = errors.get(k, 0) + v
        out.append(f"reshard of 2000 slots (60,000 keys in 200 tags) took {took:.1f} s (redis-cli exit {res.returncode}); "
                   f"multi-key scripts meanwhile: {sum(log['ok'] for log in logs)} ok, errors {errors or 0}")
        # kill -9 of a primary under a light load
        stop = threading.Event()
        log = {}
        th = threading.Thread(target=_load_thread, args=(lambda: (rc.set("{b8}:k", "v"), rc.get("{b8}:k")), stop, log))
        th.start()
        time.sleep(1)
        target = c.primary_for("{b8}:k")
        t0 = c.kill(target)
        c.wait_failover(target, 30)
        t1 = time.monotonic()
        time.sleep(2)
        stop.set()
        th.join()
        out.append(f"cluster kill -9 of a primary (node timeout 1 s): replica promoted {t1 - t0:.2f} s after the kill; "
                   f"SET+GET every 10 ms: {log['ok']} ok, errors {log['kinds'] or 0}"
                   + (f", the last {log['last'] - t0:.2f} s after the kill" if log["last"] else ""))
        rc.close()
    finally:
        c.stop()
    s = RedisSentinels(tempfile.mkdtemp(prefix="apicache-features-"), down_after_ms=1000).start()
    try:
        sen = Sentinel([("127.0.0.1", n.port) for n in s.sentinels], socket_timeout=0.5)
        master = sen.master_for("mymaster", socket_timeout=0.5)
        p = master.pipeline(transaction=False)
        p.set("k", "v")
        p.execute_command("WAIT", len(sen.discover_slaves("mymaster")), 300)
        out.append(f"sentinel: SET + WAIT <replicas the sentinels list> in one pipeline -> {p.execute()}")
        stop = threading.Event()
        log = {}
        th = threading.Thread(target=_load_thread, args=(lambda: master.set("k", "v"), stop, log))
        th.start()
        time.sleep(1)
        old = s.primary()
        t0 = s.kill(old)
        s.wait_failover(old, 30)
        t1 = time.monotonic()
        time.sleep(2)
        stop.set()
        th.join()
        out.append(f"sentinel kill -9 of the primary (down-after 1 s): promoted {t1 - t0:.2f} s after the kill; "
                   f"SET every 10 ms: {log['ok']} ok, errors {log['kinds'] or 0}"
                   + (f", the last {log['last'] - t0:.2f} s after the kill" if log["last"] else "")
                   + f"; the client then writes to {sen.discover_master('mymaster')[1]} (was {old.port})")
    finally:
        s.stop()
    return out


# -- the orchestrator --------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--messages", type=int, default=300)
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--targets", default="single,cluster")
    p.add_argument("--web-only", action="store_true")
    p.add_argument("--no-web", action="store_true")
    p.add_argument("--web-seconds", type=float, default=5.0)
    p.add_argument("--web-ops", default="bare-twisted-web,apicache-hit")
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--from-json", nargs="+", help="print the tables of measurements saved with --json, measure nothing")
    p.add_argument("--features", action="store_true",
                   help="only check what redis-py does on a real cluster and sentinels (WAIT, pub/sub, failover, reshard)")
    # internal: one measurement in a child process
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--op", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--sha-get", help=argparse.SUPPRESS)
    p.add_argument("--sha-put", help=argparse.SUPPRESS)
    p.add_argument("--serve-web", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_web:
        web_main(args.serve_web, args.port)
        return
    if args.worker:
        worker_main(args)
        return
    if args.from_json:
        saved: list[dict[str, Any]] = []
        for path in args.from_json:
            with open(path) as f:
                saved += json.load(f)
        report(saved)
        return
    if args.features:
        for line in features():
            print("-", line)
        return
    results: list[dict[str, Any]] = []
    if not args.web_only:
        results += measure_clients(args)
    if not args.no_web:
        results += measure_web(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    report(results)


def measure_clients(args: argparse.Namespace) -> list[dict[str, Any]]:
    import hashlib

    from apicache.harness.rediscluster import RedisCluster, RedisNode
    from apicache.store.redis import scripts

    directory = tempfile.mkdtemp(prefix="apicache-bench-clients-")
    targets = args.targets.split(",")
    urls: dict[str, str] = {}
    nodes: list[RedisNode] = []
    single = cluster = None
    results: list[dict[str, Any]] = []
    try:
        if "single" in targets:
            single = RedisNode(directory, name="single").start()
            urls["single"] = f"redis://127.0.0.1:{single.port}/0"
            nodes.append(single)
        if "cluster" in targets:
            cluster = RedisCluster(directory).start()
            urls["cluster"] = cluster.url
            nodes += cluster.nodes
        for n in nodes:
            for text in (scripts.GET_OR_LOCK, scripts.PUT):
                n.command("SCRIPT", "LOAD", text)
        sha_get = hashlib.sha1(scripts.GET_OR_LOCK.encode()).hexdigest()
        sha_put = hashlib.sha1(scripts.PUT.encode()).hexdigest()
        candidates = args.candidates.split(",")
        for r in range(args.rounds):
            for target in targets:
                for op in args.ops.split(","):
                    if op == "spubsub" and target != "cluster":
                        continue
                    order = [c for c in candidates if not (c == "txredisapi" and target != "single")]
                    # interleaved, in a different order each round
                    random.Random(r).shuffle(order)
                    for cand in order:
                        cmd = [sys.executable, __file__, "--worker", cand, "--mode", target, "--url", urls[target],
                               "--op", op, "--run", f"r{r}{uuid.uuid4().hex[:6]}", "--sha-get", sha_get,
                               "--sha-put", sha_put, "--seconds", str(args.seconds),
                               "--concurrency", str(args.concurrency), "--messages", str(args.messages)]
                        try:
                            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
                            data = json.loads(line)
                            if not data:
                                data = {"error": out.stderr.strip()[-300:]}
                        except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                            data = {"error": str(e)[:300]}
                        data.update(round=r, target=target, op=op, candidate=cand)
                        print(json.dumps(data), file=sys.stderr, flush=True)
                        results.append(data)
            if cluster is not None:
                # misses accumulate: start each round from empty nodes
                for n in cluster.primaries():
                    n.command("FLUSHALL")
            if single is not None:
                single.command("FLUSHALL")
    finally:
        if cluster is not None:
            cluster.stop()
        if single is not None:
            single.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return results


def measure_web(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for r in range(args.rounds):
        for kind in (["epoll", "asyncio"] if r % 2 == 0 else ["asyncio", "epoll"]):
            for op, measure in (("bare-twisted-web", web_round), ("apicache-hit", apicache_round)):
                if op not in args.web_ops:
                    continue
                data: dict[str, Any] = dict(measure(kind, args.web_seconds, 32))
                data.update(round=r, target="web", op=op, candidate=kind)
                print(json.dumps(data), file=sys.stderr, flush=True)
                results.append(data)
    return results


def report(results: list[dict[str, Any]]) -> None:
    """
    Print the medians over rounds as Markdown tables: per target, ops/s,
    p99 and the client's CPU per operation of each Redis operation; pub/sub
    latency; the hit path on each reactor.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for d in results:
        if "error" not in d:
            groups.setdefault((d["target"], d["op"], d["candidate"]), []).append(d)
    errors = [d for d in results if "error" in d]

    def med(key: tuple[str, str, str], field: str) -> float | None:
        vals = [d[field] for d in groups.get(key, []) if field in d]
        return statistics.median(vals) if vals else None

    def cell(key: tuple[str, str, str]) -> str:
        ops, p99, cpu = med(key, "ops_per_s"), med(key, "p99_ms"), med(key, "cpu_us_per_op")
        if ops is None or p99 is None or cpu is None:
            return "—"
        return f"{ops:,.0f} · {p99:.1f} · **{cpu:.0f}**"

    candidates = [c for c in CANDIDATES if any(k[2] == c for k in groups)]
    for target in ("single", "cluster"):
        ops = [op for op in ("hit", "lock", "miss") if any(k[:2] == (target, op) for k in groups)]
        if not ops:
            continue
        rounds = max(len(v) for k, v in groups.items() if k[0] == target)
        print(f"\n{target} (medians of {rounds} rounds): ops/s · p99 ms · **client CPU µs per operation**\n")
        print("| candidate | " + " | ".join(ops) + " |")
        print("|---|" + "---:|" * len(ops))
        for c in candidates:
            if any((target, op, c) in groups for op in ops):
                print(f"| {c} | " + " | ".join(cell((target, op, c)) for op in ops) + " |")
    pub = [(t, op) for t, op in (("single", "pubsub"), ("cluster", "pubsub"), ("cluster", "spubsub"))
           if any(k[:2] == (t, op) for k in groups)]
    if pub:
        print("\npublish → subscriber callback, one message at a time: p50 / p99 ms\n")
        print("| candidate | " + " | ".join(f"{t} {'SPUBLISH' if op == 'spubsub' else 'PUBLISH'}" for t, op in pub) + " |")
        print("|---|" + "---:|" * len(pub))
        for c in candidates:
            cells = []
            for t, op in pub:
                p50, p99 = med((t, op, c), "p50_ms"), med((t, op, c), "p99_ms")
                cells.append("—" if p50 is None or p99 is None else f"{p50:.2f} / {p99:.2f}")
            print(f"| {c} | " + " | ".join(cells) + " |")
    web = sorted({k[1] for k in groups if k[0] == "web"})
    if web:
        print("\nthe hit path on each reactor (wrk -t1 -c32, server and wrk pinned to one core each)\n")
        print("| server | reactor | req/s | p50 ms | p99 ms | **server CPU µs/request** |")
        print("|---|---|---:|---:|---:|---:|")
        for op in web:
            for kind in ("epoll", "asyncio"):
                k = ("web", op, kind)
                if k in groups:
                    print(f"| {op} | {kind} | {med(k, 'rps') or 0:,.0f} | {med(k, 'p50_ms') or 0:.2f} | "
                          f"{med(k, 'p99_ms') or 0:.2f} | **{med(k, 'cpu_us_per_op') or 0:.1f}** |")
    for d in errors:
        print(f"\nerror: {d['target']} {d['op']} {d['candidate']}: {d['error'][:200]}")


if __name__ == "__main__":
    main()
