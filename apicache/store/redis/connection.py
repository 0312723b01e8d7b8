"""
The Redis store's connections: each kept open by a L{ClientService}
(reconnecting with a capped backoff), authenticated and prepared before use.
The commands connection is PINGed (readiness, a frozen Redis) and bounds
every call; the pub/sub connection hands every message to its owner.
"""

from __future__ import annotations

import random
from collections.abc import Callable, MutableMapping
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.interfaces import IAddress, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import RedisProtocol, SubscriberProtocol  # type: ignore[import-untyped]

from apicache.store.interface import StoreUnavailable
from apicache.store.redis.address import RedisAddress

__all__ = [
    "RedisConnection",
    "RedisCommands",
    "CommandProtocol",
    "PubSubProtocol",
    "MAX_RECONNECT_DELAY",
    "PING_INTERVAL",
    "PINGS_BEFORE_RECONNECT",
    "PREPARE_TIMEOUT",
]

#: Reconnection never waits longer than this between attempts.
MAX_RECONNECT_DELAY = 2.0
#: How often the commands connection is checked with PING (readiness, slow Redis).
PING_INTERVAL = 1.0
#: Missed PINGs in a row after which the connection is dropped and remade.
PINGS_BEFORE_RECONNECT = 3
#: Seconds a new connection may take to authenticate and subscribe (and an
#: old one to close).
PREPARE_TIMEOUT = 5.0

_backoff = backoffPolicy(initialDelay=0.1, maxDelay=MAX_RECONNECT_DELAY, jitter=lambda: random.uniform(0, 0.1))


def retry_delay(attempt: int) -> float:
    """
    Return the seconds to wait before connection attempt ``attempt``: a
    backoff from 0.1 s, never over L{MAX_RECONNECT_DELAY}.
    """
    # backoffPolicy adds its jitter on top of maxDelay: cap the sum
    return min(MAX_RECONNECT_DELAY, _backoff(attempt))


class _ConnectionFactory(Factory):
    """
    Builds the protocols of one L{RedisConnection}, and is how they tell it
    that they lost their connection.
    """

    def __init__(
        self, build: Callable[[IReactorTime], Any], clock: IReactorTime, lost: Callable[[Any, Failure], None]
    ) -> None:
        self._build = build
        self._clock = clock
        self.lost = lost

    def buildProtocol(self, addr: IAddress | None) -> Any:
        p = self._build(self._clock)
        p.factory = self
        return p


class CommandProtocol(RedisProtocol):  # type: ignore[misc]
    """
    A Redis connection for commands: replies stay bytes (no charset, no
    number conversion), and its L{RedisConnection} hears of its loss.

    No password or database here: AUTH and SELECT run when the connection is
    prepared, where a failure drops the connection and the service retries.

    @param clock: txredisapi's parser resumes after a bulk reply on the
        next turn of C{self.callLater}, the global reactor's unless set:
        here, the clock the store was given.
    """

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__(charset=None, convertNumbers=False)
        self.callLater = clock.callLater

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.factory.lost(self, why)


class PubSubProtocol(SubscriberProtocol):  # type: ignore[misc]
    """
    A Redis connection for pub/sub: hands every message's bytes to
    ``on_message``; its L{RedisConnection} hears of its loss.
    """

    def __init__(self, clock: IReactorTime, on_message: Callable[[bytes], None]) -> None:
        super().__init__(charset=None, convertNumbers=False)
        # see CommandProtocol
        self.callLater = clock.callLater
        self._on_message = on_message

    def messageReceived(self, pattern: object, channel: object, message: bytes) -> None:
        self._on_message(message)

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.factory.lost(self, why)


class RedisConnection:
    """
    One connection kept open by a L{ClientService} (backoff capped at
    L{MAX_RECONNECT_DELAY}), authenticated and prepared before use.

    @ivar protocol: the connected and prepared protocol, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        reactor: IReactorTCP,
        clock: IReactorTime,
        address: RedisAddress,
        build: Callable[[IReactorTime], Any],
        prepare: Callable[[Any], Deferred[Any]] | None = None,
        on_change: Callable[[bool], None] = lambda up: None,
    ) -> None:
        """
        @param reactor: connects (see L{RedisAddress.endpoint}).
        @param clock: times the retries and the preparation.
        @param build: returns a new protocol (a L{CommandProtocol} or
            L{PubSubProtocol}) given the clock.
        @param prepare: called with each new connection once it is
            authenticated; the connection is used once its Deferred fires.
        @param on_change: called with C{True} when a prepared connection is
            in use, with C{False} when it is lost.
        """
        self.name = name
        self.address = address
        self.protocol: Any = None
        self._clock = clock
        self._prepare_more = prepare
        self._on_change = on_change
        self._down_logged = False
        self._waiting: Deferred[Any] | None = None
        self.service = ClientService(
            address.endpoint(reactor),
            _ConnectionFactory(build, clock, self._lost),
            retryPolicy=retry_delay,
            clock=clock,
            prepareConnection=self._prepare,
        )

    def _prepare(self, p: Any) -> Deferred[None]:
        # p is ClientService's proxy of the protocol: calls on it reach the protocol
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
            self._await_connection()

        return Deferred.fromCoroutine(prepare()).addTimeout(PREPARE_TIMEOUT, self._clock)

    def _await_connection(self) -> None:
        # Asked here, while ClientService is still connecting, whenConnected
        # fires with this very connection as soon as its preparation is
        # done.  (Asked from connectionLost, it would still hand back the
        # connection being lost: ClientService hears of a loss after the
        # protocol does.)
        if self._waiting is None:
            self._waiting = self.service.whenConnected()
            self._waiting.addCallbacks(self._connected, self._stopped)

    def _connected(self, p: Any) -> None:
        self._waiting = None
        self.protocol = p
        self._down_logged = False
        self.log.info("redis {name} connection ready: {address}", name=self.name, address=repr(self.address))
        self._on_change(True)

    def _stopped(self, f: Failure) -> None:
        self._waiting = None
        f.trap(CancelledError)

    def _lost(self, p: Any, reason: Failure) -> None:
        if self.protocol is p:
            self.protocol = None
            self.log.warn("redis {name} connection lost: {why}", name=self.name, why=reason.getErrorMessage())
            self._on_change(False)

    def start(self) -> None:
        """
        Connect, and keep reconnecting, in the background.
        """
        self.service.startService()

    def stop(self) -> Deferred[None]:
        """
        Close the connection and stop reconnecting.  Fires with C{None}
        within L{PREPARE_TIMEOUT} seconds, even if Redis is frozen (the
        connection is then aborted).
        """
        p = self.protocol

        def abort(f: Failure) -> None:
            f.trap(TimeoutError, CancelledError)
            if p is not None and p.transport is not None:
                p.transport.abortConnection()

        d: Deferred[None] = self.service.stopService()
        return d.addTimeout(PREPARE_TIMEOUT, self._clock).addErrback(abort)


class RedisCommands:
    """
    The commands connection of a store: kept open, PINGed every
    L{PING_INTERVAL} seconds, every call bounded by ``timeout``.

    Calls fail at once with L{StoreUnavailable} while it is not connected
    or not answering (a call timed out and no PING has succeeded since):
    callers go on without the store rather than each waiting out the
    timeout.  A connection that misses L{PINGS_BEFORE_RECONNECT} PINGs in a
    row is dropped and made again.

    @ivar counters: counts ``errors`` and ``timeouts`` (shared with the store).
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        address: RedisAddress,
        timeout: float,
        counters: MutableMapping[str, int],
    ) -> None:
        self.timeout = timeout
        self.counters = counters
        self.answering = False
        self._clock = clock
        self._pings_missed = 0
        self.connection = RedisConnection("commands", reactor, clock, address, CommandProtocol, on_change=self._changed)
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = clock

    @property
    def protocol(self) -> Any:
        """
        The connected protocol, or C{None}.
        """
        return self.connection.protocol

    def start(self) -> None:
        """
        Connect (and keep reconnecting) in the background, and start PINGing.
        """
        self.connection.start()
        self._pinger.start(PING_INTERVAL, now=False)

    def stop(self) -> Deferred[None]:
        """
        Stop PINGing and close the connection; see L{RedisConnection.stop}.
        """
        if self._pinger.running:
            self._pinger.stop()
        return self.connection.stop()

    def ready(self) -> bool:
        """
        Return whether Redis is connected and answering.
        """
        return self.answering and self.connection.protocol is not None

    def _changed(self, up: bool) -> None:
        self.answering = up

    def _ping(self) -> None:
        p = self.connection.protocol

        def ok(_: object) -> None:
            self.answering = True
            self._pings_missed = 0

        def failed(_: Failure) -> None:
            self.answering = False
            if p is not None and p is self.connection.protocol:
                self._pings_missed += 1
                if self._pings_missed >= PINGS_BEFORE_RECONNECT:
                    # a connection that stopped answering: start afresh
                    self._pings_missed = 0
                    p.transport.abortConnection()

        self.call(lambda p: p.execute_command("PING"), probe=True).addCallbacks(ok, failed)

    def call(self, command: Callable[[Any], Deferred[Any]], probe: bool = False) -> Deferred[Any]:
        """
        Run ``command(protocol)``.

        @param probe: run it even while Redis is not answering (a PING).
        @return: a Deferred firing with the reply.  It fails with
            L{StoreUnavailable} at once when not connected or, unless
            ``probe``, not answering; on an error reply; or after
            ``timeout`` seconds without an answer.
        """
        p = self.connection.protocol
        if p is None or not p.connected:
            self.counters["errors"] += 1
            return fail(StoreUnavailable("redis is not connected"))
        if not (probe or self.answering):
            self.counters["errors"] += 1
            return fail(StoreUnavailable("redis is not answering"))
        try:
            d: Deferred[Any] = command(p)
        except Exception as e:
            self.counters["errors"] += 1
            return fail(StoreUnavailable(f"redis: {e}"))
        # On timeout addTimeout cancels d; the protocol still reads (and
        # drops) the late reply, which keeps the later replies in order.
        return d.addTimeout(self.timeout, self._clock).addErrback(self._failed)

    def _failed(self, f: Failure) -> Failure:
        if f.check(TimeoutError):
            self.counters["timeouts"] += 1
            self.answering = False
            return Failure(StoreUnavailable(f"redis did not answer within {self.timeout} s"))
        if f.check(CancelledError):
            return f  # the caller cancelled: not a Redis error
        self.counters["errors"] += 1
        return Failure(StoreUnavailable(f"redis: {f.getErrorMessage()}"))

    def execute(self, *args: Any) -> Deferred[Any]:
        """
        Run one Redis command; see L{call}.
        """
        return self.call(lambda p: p.execute_command(*args))

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        """
        Run one Lua script (by its SHA once Redis knows it); see L{call}.
        """
        return self.call(lambda p: p.eval(script, keys, args))
