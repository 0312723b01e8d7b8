"""
The shared store: entries in Redis, with an in-process tier in front.

Layout under ``key_prefix`` (``P``), every component percent-encoded so that
no value can contain the ``:`` and ``,`` separators (see :func:`encode_key`)::

    P:e:<tenant>:<route>:<params>:<variant>   an entry (binary, see encode_entry)
    P:r:<tenant>:<route>:<params>             set: the entry keys of a resource
    P:t:<route>:<params>                      set: the P:r: keys of every tenant
    P:g:<tenant>:<route>:<params>             generation of a resource
    P:G:<route>:<params>                      generation of a resource, every tenant
    P:T:<tenant>                              generation of a tenant
    P:A                                       generation of everything
    P:l:<tenant>:<route>:<params>:<variant>   coalescing lock (instance id)
    P:inv                                     pub/sub channel of invalidations

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
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import RedisProtocol, SubscriberProtocol  # type: ignore[import-untyped]
from zope.interface import implementer

from apicache.keys import CacheKey
from apicache.store.interface import CachedResponse, IStore, StoreUnavailable
from apicache.store.memory import MemoryStore

__all__ = [
    "RedisStore",
    "RedisAddress",
    "parse_redis_url",
    "encode_key",
    "encode_entry",
    "decode_entry",
    "FORMAT_VERSION",
]

#: The first byte of every stored value; a value of another version is a miss.
FORMAT_VERSION = 1
_HEAD = struct.Struct("!BBHdddH")
_HEADER = struct.Struct("!HI")
#: Offset of the stale flag in a stored value (set in place by mark_stale).
_STALE_OFFSET = 1

#: Generations must outlive any fetch in flight (upstream.timeout, plus
#: lock_ttl): an hour is far more.  An expired one reads as 0 again.
_GENERATION_TTL = 3600
#: Reconnection never waits longer than this between attempts.
MAX_RECONNECT_DELAY = 2.0
#: How often the connection is checked with PING (readiness, slow Redis).
PING_INTERVAL = 1.0
#: Missed PINGs in a row after which the connection is dropped and remade.
_PINGS_BEFORE_RECONNECT = 3
#: Seconds a new connection may take to authenticate and subscribe.
_PREPARE_TIMEOUT = 5.0
#: How often a waiter looks for the value another instance is fetching.
_POLL_INTERVAL = 0.02


def _enc(value: str) -> str:
    # only A-Z a-z 0-9 _ . - ~ stay as they are: never ':', ',', '*', '?', '['
    return quote(value, safe="")


def _enc_params(params: tuple[str, ...]) -> str:
    # the count first, so () and ("",) differ
    return f"{len(params)}," + ",".join(_enc(p) for p in params)


def encode_key(prefix: str, key: CacheKey) -> str:
    """
    Return the Redis key of an entry.  Distinct keys give distinct strings,
    and a tenant's keys all start with that tenant's own namespace.
    """
    return f"{prefix}:e:{_enc(key.tenant)}:{_enc(key.route)}:{_enc_params(key.params)}:{_enc(key.variant)}"


def encode_entry(entry: CachedResponse) -> bytes:
    """
    Return ``entry`` in the stored format: a version byte, the stale flag,
    status, times, headers, then the body.
    """
    parts = [
        _HEAD.pack(
            FORMAT_VERSION,
            1 if entry.stale else 0,
            entry.status,
            entry.stored_at,
            entry.expires_at,
            entry.stale_until,
            len(entry.headers),
        )
    ]
    for name, value in entry.headers:
        parts.append(_HEADER.pack(len(name), len(value)))
        parts.append(name)
        parts.append(value)
    parts.append(entry.body)
    return b"".join(parts)


def decode_entry(data: bytes) -> CachedResponse | None:
    """
    Return the entry stored as ``data``, or ``None`` if it is of another
    format version or damaged.
    """
    if len(data) < _HEAD.size or data[0] != FORMAT_VERSION:
        return None
    try:
        _, stale, status, stored_at, expires_at, stale_until, n = _HEAD.unpack_from(data)
        pos = _HEAD.size
        headers = []
        for _ in range(n):
            ln, lv = _HEADER.unpack_from(data, pos)
            pos += _HEADER.size
            name = data[pos : pos + ln]
            pos += ln
            value = data[pos : pos + lv]
            pos += lv
            headers.append((name, value))
        if pos > len(data):
            return None
    except struct.error:
        return None
    return CachedResponse(
        status,
        tuple(headers),
        data[pos:],
        stored_at=stored_at,
        expires_at=expires_at,
        stale_until=stale_until,
        stale=bool(stale),
    )


class RedisAddress:
    """
    Where and how to connect, from a ``redis://``, ``rediss://`` or
    ``unix://`` URL.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_certs: str | None = None,
        verify: bool = True,
        unix_path: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.tls = tls
        self.ca_certs = ca_certs
        self.verify = verify
        self.unix_path = unix_path

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        """
        Return a client endpoint for this address (TLS-wrapped for ``rediss``).
        """
        if self.unix_path is not None:
            return UNIXClientEndpoint(reactor, self.unix_path, timeout=5)
        ep: IStreamClientEndpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=5)
        if self.tls:
            if not self.verify:
                from twisted.internet.ssl import CertificateOptions

                options: Any = CertificateOptions(verify=False)
            else:
                trust: Any = platformTrust()
                if self.ca_certs:
                    with open(self.ca_certs, "rb") as f:
                        trust = Certificate.loadPEM(f.read())
                options = optionsForClientTLS(self.host, trustRoot=trust)
            ep = wrapClientTLS(options, ep)
        return ep

    def __repr__(self) -> str:
        where = self.unix_path or f"{self.host}:{self.port}"
        return f"<Redis {'rediss' if self.tls else 'redis'} {where}/{self.db}>"


def parse_redis_url(url: str) -> RedisAddress:
    """
    Return the L{RedisAddress} of ``url``: ``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://`` likewise over TLS (query ``ssl_ca_certs=PATH`` for a private
    CA, ``ssl_cert_reqs=none`` to skip verification), or
    ``unix:///path?db=N``.

    @raise ValueError: another scheme or a bad database number.
    """
    u = urlsplit(url)
    query = parse_qs(u.query)
    if u.scheme == "unix":
        return RedisAddress(
            unix_path=unquote(u.path),
            db=int(query.get("db", ["0"])[0]),
            username=unquote(u.username) if u.username else None,
            password=unquote(u.password) if u.password else None,
        )
    if u.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis URL: {url!r}")
    path = u.path.strip("/")
    return RedisAddress(
        host=u.hostname or "127.0.0.1",
        port=u.port or 6379,
        db=int(path) if path else int(query.get("db", ["0"])[0]),
        username=unquote(u.username) if u.username else None,
        password=unquote(u.password) if u.password is not None else None,
        tls=u.scheme == "rediss",
        ca_certs=query.get("ssl_ca_certs", [None])[0],
        verify=query.get("ssl_cert_reqs", ["required"])[0].lower() not in ("none", "cert_none"),
    )


# -- scripts ----------------------------------------------------------------

# KEYS: entry, resource set, tenants set, g, G, T, A, lock
# ARGV: 4 generation tokens, value, ttl ms, instance id
_PUT = """
local cur = redis.call('MGET', KEYS[4], KEYS[5], KEYS[6], KEYS[7])
local ok = true
for i = 1, 4 do
  local v = cur[i]
  if not v then v = '0' end
  if v ~= ARGV[i] then ok = false end
end
if redis.call('GET', KEYS[8]) == ARGV[7] then redis.call('DEL', KEYS[8]) end
if not ok then return 0 end
local px = tonumber(ARGV[6])
redis.call('SET', KEYS[1], ARGV[5], 'PX', px)
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('SADD', KEYS[3], KEYS[2])
for i = 2, 3 do
  if redis.call('PTTL', KEYS[i]) < px then redis.call('PEXPIRE', KEYS[i], px) end
end
return 1
"""

# the value if there is one; else take the lock (1) or report its owner busy (2)
# KEYS: entry, lock   ARGV: instance id, lock ttl ms (0: no locking)
_GET_OR_LOCK = """
local v = redis.call('GET', KEYS[1])
if v then return {0, v} end
if ARGV[2] == '0' then return {1} end
local owner = redis.call('GET', KEYS[2])
if (not owner) or owner == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {1}
end
return {2}
"""

# KEYS: lock   ARGV: instance id
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Invalidate or mark stale the variants under a list of resource sets.
# KEYS: generation, then either a resource set (one tenant) or the tenants set
# ARGV: mode ('one' | 'all'), action ('drop' | 'stale'), channel, message, generation ttl
_CHANGE = """
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local sets
if ARGV[1] == 'one' then sets = {KEYS[2]} else sets = redis.call('SMEMBERS', KEYS[2]) end
local n = 0
for _, s in ipairs(sets) do
  for _, k in ipairs(redis.call('SMEMBERS', s)) do
    if ARGV[2] == 'drop' then
      n = n + redis.call('DEL', k)
    elseif redis.call('EXISTS', k) == 1 then
      redis.call('SETRANGE', k, 1, '\\1')
      n = n + 1
    end
  end
  if ARGV[2] == 'drop' then redis.call('DEL', s) end
end
if ARGV[2] == 'drop' and ARGV[1] == 'all' then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return n
"""

# KEYS: generation   ARGV: channel, message, generation ttl
_BUMP = """
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""


_backoff = backoffPolicy(initialDelay=0.1, maxDelay=MAX_RECONNECT_DELAY, jitter=lambda: random.uniform(0, 0.1))


def _retry_delay(attempt: int) -> float:
    # backoffPolicy adds its jitter on top of maxDelay: cap the sum
    return min(MAX_RECONNECT_DELAY, _backoff(attempt))


class _Subscriber(SubscriberProtocol):  # type: ignore[misc]
    """The pub/sub connection: hands every message to the store."""

    on_message: Callable[[bytes], None] = staticmethod(lambda message: None)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.on_message(message)


class _Connection:
    """
    One connection kept open by a L{ClientService} (backoff capped at
    L{MAX_RECONNECT_DELAY}), authenticated and prepared before use.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        reactor: Any,
        address: RedisAddress,
        protocol: type,
        prepare: Callable[[Any], Deferred[Any]] | None = None,
        on_change: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self.name = name
        self._clock = reactor
        self.address = address
        self.protocol: Any = None
        self._prepare_more = prepare
        self._on_change = on_change
        self._down_logged = False
        factory = Factory()

        def build(addr: Any) -> Any:
            # no password or db here: AUTH and SELECT run in _prepare, where
            # a failure drops the connection and the service retries
            p = protocol(charset=None, convertNumbers=False)
            p.factory = factory
            return p

        factory.buildProtocol = build  # type: ignore[method-assign]
        self.service = ClientService(
            address.endpoint(reactor),
            factory,
            retryPolicy=_retry_delay,
            clock=reactor,
            prepareConnection=self._prepare,
        )

    def _prepare(self, proxy: Any) -> Deferred[Any]:
        # ClientService hands over a proxy: attributes set on it would not
        # reach the protocol that receives the data
        p = getattr(proxy, "_protocol", proxy)
        a = self.address

        async def prepare() -> None:
            try:
                await p.whenConnected()
                if a.password is not None:
                    await p.auth(a.password, a.username)
                if a.db:
                    await p.execute_command("SELECT", a.db)
                if self._prepare_more is not None:
                    await self._prepare_more(p)
            except Exception as e:
                if not self._down_logged:
                    # once per outage: retries come every 2 s
                    self._down_logged = True
                    self.log.error(
                        "redis {name} connection to {address} refused: {error}",
                        name=self.name, address=repr(a), error=str(e) or type(e).__name__,
                    )
                p.transport.abortConnection()
                raise
            lost = p.connectionLost

            def connection_lost(reason: Failure) -> None:
                if self.protocol is p:
                    self.protocol = None
                    self.log.warn("redis {name} connection lost: {why}", name=self.name, why=reason.getErrorMessage())
                    self._on_change(False)
                lost(reason)

            p.connectionLost = connection_lost
            self.protocol = p
            self._down_logged = False
            self.log.info("redis {name} connection ready: {address}", name=self.name, address=repr(a))
            self._on_change(True)

        return Deferred.fromCoroutine(prepare()).addTimeout(_PREPARE_TIMEOUT, self._clock)

    def start(self) -> None:
        self.service.startService()

    def stop(self) -> Deferred[None]:
        """
        Close the connection (at most a few seconds, even if Redis is frozen).
        """
        p = self.protocol

        def abort(f: Failure) -> None:
            f.trap(TimeoutError, CancelledError)
            if p is not None and p.transport is not None:
                p.transport.abortConnection()

        d: Deferred[None] = self.service.stopService()
        return d.addTimeout(_PREPARE_TIMEOUT, self._clock).addErrback(abort)


@implementer(IStore)
class RedisStore:
    """
    Entries in Redis, shared by every instance with the same ``key_prefix``,
    with the hot ones also held in this process (``local_max_bytes``).

    Call :meth:`start` to connect and :meth:`close` to disconnect.

    @param reactor: connects, and is the clock unless ``clock`` is given.
    @param url: see L{parse_redis_url}.
    @param timeout: seconds any one Redis call may take.
    @param max_entry_bytes: a bigger entry is not stored at all.
    @param max_value_bytes: a bigger stored value is not written to Redis.
    @param lock_ttl: how long a fetch on one instance holds off the others'
        (cross-instance coalescing); 0 turns that off.
    """

    shared = True
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        *,
        prefix: str = "apicache",
        timeout: float = 0.5,
        local_max_bytes: int = 33554432,
        max_entry_bytes: int = 26843545,
        max_value_bytes: int = 1048576,
        lock_ttl: float = 1.0,
        clock: IReactorTime | None = None,
    ) -> None:
        self._clock: IReactorTime = clock if clock is not None else reactor
        self.address = parse_redis_url(url)
        self.prefix = prefix
        self.timeout = timeout
        self.max_entry_bytes = max_entry_bytes
        self.max_value_bytes = min(max_value_bytes, max_entry_bytes)
        self.lock_ttl = lock_ttl
        self.local = MemoryStore(local_max_bytes, max_entry_bytes)
        self.instance = uuid.uuid4().hex
        self.channel = f"{prefix}:inv"
        self.counters: dict[str, int] = {
            "errors": 0,
            "timeouts": 0,
            "too_big": 0,
            "invalidations_received": 0,
            "coalesce_waits": 0,
            "local_clears": 0,
        }
        self._ping_ok = False
        self._pings_missed = 0
        self._loading: dict[CacheKey, list[Deferred[CachedResponse | None]]] = {}
        self._commands = _Connection("commands", reactor, self.address, RedisProtocol, on_change=self._commands_changed)
        self._subscriber = _Connection(
            "pubsub", reactor, self.address, _Subscriber, prepare=self._subscribe, on_change=self._subscriber_changed
        )
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = self._clock

    @classmethod
    def from_config(cls, store_config: Any, reactor: Any) -> RedisStore:
        """
        Return a store configured by a L{apicache.config.StoreConfig}.
        """
        s = store_config
        return cls(
            reactor,
            s.redis_url,
            prefix=s.key_prefix,
            timeout=s.redis_timeout,
            local_max_bytes=s.local_max_bytes,
            max_entry_bytes=int(s.max_bytes * s.max_entry_fraction),
            max_value_bytes=s.redis_max_value_bytes,
            lock_ttl=s.redis_lock_ttl,
        )

    # -- connections -------------------------------------------------------

    def start(self) -> None:
        """
        Connect (and keep reconnecting) in the background.
        """
        self._commands.start()
        self._subscriber.start()
        self._pinger.start(PING_INTERVAL, now=False)

    def close(self) -> Deferred[None]:
        """
        Disconnect.  Fires when both connections are closed.
        """
        if self._pinger.running:
            self._pinger.stop()

        async def close() -> None:
            await self._commands.stop()
            await self._subscriber.stop()

        return Deferred.fromCoroutine(close())

    def _subscribe(self, p: Any) -> Deferred[Any]:
        p.on_message = self._message
        return p.subscribe(self.channel)  # type: ignore[no-any-return]

    def _commands_changed(self, up: bool) -> None:
        self._ping_ok = up

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

    def _ping(self) -> None:
        p = self._commands.protocol

        def ok(_: object) -> None:
            self._ping_ok = True
            self._pings_missed = 0

        def failed(_: Failure) -> None:
            self._ping_ok = False
            if p is not None and p is self._commands.protocol:
                self._pings_missed += 1
                if self._pings_missed >= _PINGS_BEFORE_RECONNECT:
                    # a connection that stopped answering: start afresh
                    self._pings_missed = 0
                    p.transport.abortConnection()

        self._call(lambda p: p.execute_command("PING"), probe=True).addCallbacks(ok, failed)

    def is_ready(self) -> bool:
        return self._ping_ok and self._commands.protocol is not None and self._subscriber.protocol is not None

    def _call(self, command: Callable[[Any], Deferred[Any]], probe: bool = False) -> Deferred[Any]:
        """
        Run ``command(protocol)``; errback with L{StoreUnavailable} at once
        when not connected or, unless ``probe``, while Redis is not
        answering (a call timed out and no PING has succeeded since), else
        after ``timeout`` seconds without an answer.
        """
        p = self._commands.protocol
        if p is None or not p.connected:
            self.counters["errors"] += 1
            return fail(StoreUnavailable("redis is not connected"))
        if not (probe or self._ping_ok):
            # a slow or frozen Redis: callers go on without the store at
            # once rather than each waiting out the timeout
            self.counters["errors"] += 1
            return fail(StoreUnavailable("redis is not answering"))
        result: Deferred[Any] = Deferred()
        try:
            d = command(p)
        except Exception as e:
            self.counters["errors"] += 1
            return fail(StoreUnavailable(f"redis: {e}"))

        def timed_out() -> None:
            if not result.called:
                self.counters["timeouts"] += 1
                self._ping_ok = False
                result.errback(StoreUnavailable(f"redis did not answer within {self.timeout} s"))

        timer = self._clock.callLater(self.timeout, timed_out)

        def done(outcome: Any) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return
            if isinstance(outcome, Failure):
                self.counters["errors"] += 1
                result.errback(StoreUnavailable(f"redis: {outcome.getErrorMessage()}"))
            else:
                result.callback(outcome)

        # the late reply is still consumed by d, which keeps replies in order
        d.addBoth(done)
        return result

    def _command(self, *args: Any) -> Deferred[Any]:
        return self._call(lambda p: p.execute_command(*args))

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        return self._call(lambda p: p.eval(script, keys, args))

    # -- keys --------------------------------------------------------------

    def _resource(self, tenant: str, route: str, params: tuple[str, ...]) -> str:
        return f"{_enc(tenant)}:{_enc(route)}:{_enc_params(params)}"

    def _gen_keys(self, key: CacheKey) -> list[str]:
        p = self.prefix
        rp = f"{_enc(key.route)}:{_enc_params(key.params)}"
        return [
            f"{p}:g:{self._resource(key.tenant, key.route, key.params)}",
            f"{p}:G:{rp}",
            f"{p}:T:{_enc(key.tenant)}",
            f"{p}:A",
        ]

    def _lock_key(self, key: CacheKey) -> str:
        return f"{self.prefix}:l:{self._resource(key.tenant, key.route, key.params)}:{_enc(key.variant)}"

    def _publish_message(self, *change: Any) -> str:
        return json.dumps([self.instance, *change], separators=(",", ":"))

    def _local_token(self) -> Any:
        # the in-process tier answers begin() at once: its race-rule token,
        # so that a copy loaded or stored here is refused if an invalidation
        # (ours or from pub/sub) was applied meanwhile
        token: list[Any] = []
        self.local.begin(CacheKey("", "", (), "")).addCallback(token.append)
        return token[0]

    # -- reading -----------------------------------------------------------

    def lookup(self, key: CacheKey) -> CachedResponse | None:
        return self.local.lookup(key)

    def load(self, key: CacheKey) -> Deferred[CachedResponse | None]:
        """
        Fire with the entry in Redis (also kept in this process), or ``None``.
        When another instance is fetching that key (it holds the lock), wait
        for its answer up to ``lock_ttl``.  Concurrent loads of one key share
        one round trip.
        """
        waiters = self._loading.get(key)
        mine: Deferred[CachedResponse | None] = Deferred()
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

        Deferred.fromCoroutine(self._load(key)).addBoth(settle)
        return mine

    async def _load(self, key: CacheKey) -> CachedResponse | None:
        local_token = self._local_token()
        rkey = encode_key(self.prefix, key)
        lock_ms = int(self.lock_ttl * 1000)
        deadline = self._clock.seconds() + self.lock_ttl
        while True:
            reply = await self._eval(_GET_OR_LOCK, [rkey, self._lock_key(key)], [self.instance, lock_ms])
            if reply[0] == 0:
                entry = decode_entry(reply[1])
                if entry is not None:
                    self.local.put_now(key, entry, local_token)
                return entry
            if reply[0] == 1 or self._clock.seconds() >= deadline:
                # ours to fetch (or waited long enough: fetch anyway)
                self.local.discard(key)
                return None
            self.counters["coalesce_waits"] += 1
            await deferLater(self._clock, _POLL_INTERVAL, lambda: None)

    # -- writing -----------------------------------------------------------

    def begin(self, key: CacheKey) -> Deferred[Any]:
        local_token = self._local_token()
        d = self._call(lambda p: p.execute_command("MGET", *self._gen_keys(key)))
        d.addCallback(lambda gens: (tuple(g if g is not None else b"0" for g in gens), local_token))
        return d

    def put(self, key: CacheKey, entry: CachedResponse, token: Any) -> Deferred[bool]:
        gens, local_token = token
        value = encode_entry(entry)
        ttl_ms = int((entry.stale_until - self._clock.seconds()) * 1000)
        if ttl_ms <= 0 or len(value) > self.max_value_bytes or entry.size() > self.max_entry_bytes:
            if len(value) > self.max_value_bytes:
                self.counters["too_big"] += 1
            return succeed(False)
        res = self._resource(key.tenant, key.route, key.params)
        p = self.prefix
        keys = [
            encode_key(p, key),
            f"{p}:r:{res}",
            f"{p}:t:{_enc(key.route)}:{_enc_params(key.params)}",
            *self._gen_keys(key),
            self._lock_key(key),
        ]
        d = self._eval(_PUT, keys, [*gens, value, ttl_ms, self.instance])

        def stored(n: int) -> bool:
            if n != 1:
                return False
            self.local.put_now(key, entry, local_token)
            return True

        return d.addCallback(stored)

    def release(self, key: CacheKey, token: Any) -> None:
        if not self.lock_ttl:
            return
        d = self._eval(_RELEASE, [self._lock_key(key)], [self.instance])
        # best effort: the lock expires by itself after lock_ttl
        d.addErrback(lambda f: f.trap(StoreUnavailable))

    def discard(self, key: CacheKey) -> Deferred[int]:
        self.local.discard(key)
        rkey = encode_key(self.prefix, key)
        message = self._publish_message("d", key.tenant, key.route, list(key.params), key.variant)

        def publish(n: int) -> Deferred[int]:
            return self._call(lambda p: p.execute_command("PUBLISH", self.channel, message)).addCallback(lambda _: n)

        return self._call(lambda p: p.execute_command("DEL", rkey)).addCallback(publish)

    def _change(self, action: str, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        p = self.prefix
        rp = f"{_enc(route)}:{_enc_params(params)}"
        if tenant is None:
            keys = [f"{p}:G:{rp}", f"{p}:t:{rp}"]
            mode = "all"
        else:
            res = self._resource(tenant, route, params)
            keys = [f"{p}:g:{res}", f"{p}:r:{res}"]
            mode = "one"
        message = self._publish_message("s" if action == "stale" else "i", tenant, route, list(params))
        return self._eval(_CHANGE, keys, [mode, action, self.channel, message, _GENERATION_TTL])

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
        gen = f"{p}:A" if tenant is None else f"{p}:T:{_enc(tenant)}"
        await self._eval(_BUMP, [gen], [self.channel, message, _GENERATION_TTL])
        # SCAN, not KEYS nor FLUSHDB: only our prefix, without blocking Redis
        # one pass over the keyspace; generations stay (they only grow)
        if tenant is None:
            patterns = [f"{p}:[ertl]:*"]
        else:
            patterns = [f"{p}:[erl]:{_enc(tenant)}:*"]
        entry_prefix = f"{p}:e:".encode()
        n = 0
        for pattern in patterns:
            cursor = b"0"
            while True:
                cursor, found = await self._command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                if found:
                    await self._command("UNLINK", *found)
                    n += sum(1 for k in found if k.startswith(entry_prefix))
                if cursor in (b"0", 0, "0"):
                    break
        return n

    def forget(self, tenant: str, route: str) -> None:
        self.local.forget(tenant, route)

    # -- invalidations from other instances ----------------------------------

    def _message(self, message: bytes) -> None:
        try:
            origin, kind, *rest = json.loads(message)
        except (ValueError, TypeError):
            self.log.warn("ignored a malformed invalidation message")
            return
        if origin == self.instance:
            return
        self.counters["invalidations_received"] += 1
        if kind == "i":
            tenant, route, params = rest
            self.local.invalidate(tenant, route, tuple(params))
        elif kind == "s":
            tenant, route, params = rest
            self.local.mark_stale(tenant, route, tuple(params))
        elif kind == "c":
            self.local.clear(rest[0])
        elif kind == "d":
            tenant, route, params, variant = rest
            self.local.discard(CacheKey(tenant, route, tuple(params), variant))

    # -- health ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return self.local.stats()

    def tenant_entries(self) -> dict[str, int]:
        """
        Return the entries held in this process per tenant (read at metrics
        scrape time); Redis holds more.
        """
        return self.local.tenant_entries()

    def metrics(self) -> Iterator[Metric]:
        """
        Yield this store's Prometheus metric families (a source for
        L{apicache.metrics.Metrics.add_source}).
        """
        c = self.counters
        yield CounterMetricFamily("apicache_redis_errors", "Redis calls that failed: not connected, not answering, or an error reply (timeouts are counted apart).", value=c["errors"])
        yield CounterMetricFamily("apicache_redis_timeouts", "Redis calls without an answer within store.redis_timeout.", value=c["timeouts"])
        yield CounterMetricFamily("apicache_redis_values_too_big", "Answers over store.redis_max_value_bytes, not written to Redis.", value=c["too_big"])
        yield CounterMetricFamily("apicache_redis_invalidations_received", "Invalidations from other instances applied to the in-process tier.", value=c["invalidations_received"])
        yield CounterMetricFamily("apicache_redis_coalesce_waits", "Polls for an answer another instance was fetching.", value=c["coalesce_waits"])
        yield CounterMetricFamily("apicache_redis_local_clears", "Times the in-process tier was emptied because the pub/sub connection was remade.", value=c["local_clears"])
        yield GaugeMetricFamily("apicache_redis_up", "1 while Redis is connected and answering.", value=1 if self.is_ready() else 0)
