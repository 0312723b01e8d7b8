"""
RedisStore's connection handling, driven by a Clock: per-call timeouts,
PINGs and readiness, reconnection.  The store connects through a
L{MemoryReactorClock}; each test plays the Redis end of the connections
(reads the commands the store wrote, answers in RESP), so time passes only
by C{reactor.advance()}.  What Redis itself does is tested against a real
redis-server in test_redis_store.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from store_contract import entry, key
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from apicache.store.interface import StoreUnavailable
from apicache.store.redis import RedisStore, encode_entry
from apicache.store.redis.connection import (
    MAX_RECONNECT_DELAY,
    PING_INTERVAL,
    PINGS_BEFORE_RECONNECT,
    PREPARE_TIMEOUT,
    retry_delay,
)

TIMEOUT = 0.5
NO_GENERATIONS = b"*4\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n"


def parse_commands(data: bytes) -> list[list[bytes]]:
    """
    Return the commands in ``data``, as a client writes them (RESP arrays of
    bulk strings).
    """
    commands = []
    lines = data.split(b"\r\n")
    i = 0
    while i < len(lines) - 1:
        assert lines[i].startswith(b"*"), lines[i]
        n = int(lines[i][1:])
        args = [lines[i + 2 + 2 * j] for j in range(n)]
        commands.append(args)
        i += 1 + 2 * n
    return commands


class RedisEnd:
    """
    The Redis end of one connection the store made through the reactor.
    """

    def __init__(self, reactor: MemoryReactorClock, index: int) -> None:
        self.reactor = reactor
        host, port, factory, _, _ = reactor.tcpClients[index]
        self.protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransportWithDisconnection()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def received(self) -> list[list[bytes]]:
        """
        Return the commands the store sent since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return parse_commands(data)

    def answer(self, data: bytes) -> None:
        """
        Send ``data`` (RESP) to the store.
        """
        self.protocol.dataReceived(data)
        # txredisapi reads on after a bulk string at the clock's next turn
        self.reactor.advance(0)

    def drop(self) -> None:
        """
        Lose the connection, as when Redis goes away.
        """
        self.transport.loseConnection()

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)


def subscribed(channel: bytes) -> bytes:
    return b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(channel), channel)


class ConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.store = RedisStore(self.reactor, "redis://127.0.0.1:6379/0", prefix="p", timeout=TIMEOUT)
        self.store.start()
        self.commands, self.pubsub = self.connect()

    def connect(self) -> tuple[RedisEnd, RedisEnd]:
        """Accept both connections; return their Redis ends, subscribed."""
        assert len(self.reactor.tcpClients) == 2
        commands, pubsub = RedisEnd(self.reactor, 0), RedisEnd(self.reactor, 1)
        assert commands.received() == []
        assert pubsub.received() == [[b"SUBSCRIBE", b"p:inv"]]
        pubsub.answer(subscribed(b"p:inv"))
        return commands, pubsub

    def reconnect(self, seen: int) -> RedisEnd:
        """Accept the next connection attempt, the ``seen``-th."""
        assert len(self.reactor.tcpClients) == seen + 1
        return RedisEnd(self.reactor, seen)

    def test_ready_once_both_connections_are_made_and_subscribed(self) -> None:
        reactor = MemoryReactorClock()
        store = RedisStore(reactor, "redis://127.0.0.1:6379/0", prefix="q", timeout=TIMEOUT)
        assert not store.is_ready()
        store.start()
        RedisEnd(reactor, 0)
        pubsub = RedisEnd(reactor, 1)
        assert not store.is_ready()  # not subscribed yet
        pubsub.answer(subscribed(b"q:inv"))
        assert store.is_ready()
        assert self.store.is_ready()

    def test_a_call_fails_when_redis_timeout_passes_without_an_answer(self) -> None:
        d = self.store.begin(key())
        assert self.commands.received()[0][0] == b"MGET"
        self.reactor.advance(TIMEOUT - 0.01)
        self.assertNoResult(d)
        self.reactor.advance(0.01)
        self.failureResultOf(d, StoreUnavailable)
        assert self.store.counters["timeouts"] == 1
        assert not self.store.is_ready()

    def test_after_a_timeout_calls_fail_at_once_until_a_ping_is_answered(self) -> None:
        self.failureResultOf(self.timed_out_begin(), StoreUnavailable)
        # not answering: no call is even sent, none waits out the timeout
        self.failureResultOf(self.store.load(key()), StoreUnavailable)
        self.failureResultOf(self.store.invalidate(None, "object", ("42",)), StoreUnavailable)
        assert self.commands.received() == []
        # the late answer to MGET is read and dropped: replies stay in order
        self.commands.answer(NO_GENERATIONS)
        self.reactor.advance(PING_INTERVAL - TIMEOUT)
        assert self.commands.received() == [[b"PING"]]
        self.commands.answer(b"+PONG\r\n")
        assert self.store.is_ready()
        d = self.store.begin(key())
        assert self.commands.received()[0][0] == b"MGET"
        # the four generations, then the tag sequence (issue 12)
        self.commands.answer(b"*5\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n$-1\r\n$1\r\n7\r\n")
        gens, seq, _, _ = self.successResultOf(d)
        assert gens == (b"1", b"0", b"2", b"0")
        assert seq == 7

    def timed_out_begin(self) -> Any:
        d = self.store.begin(key())
        self.commands.received()
        self.reactor.advance(TIMEOUT)
        return d

    def test_an_error_reply_is_store_unavailable(self) -> None:
        d = self.store.begin(key())
        self.commands.answer(b"-ERR wrong\r\n")
        f = self.failureResultOf(d, StoreUnavailable)
        assert "wrong" in f.getErrorMessage()
        assert self.store.counters["errors"] == 1
        assert self.store.is_ready()  # Redis answered

    def test_pings_keep_the_store_ready(self) -> None:
        for _ in range(3):
            self.reactor.advance(PING_INTERVAL)
            assert self.commands.received() == [[b"PING"]]
            self.commands.answer(b"+PONG\r\n")
            assert self.store.is_ready()
        assert self.store.counters["timeouts"] == 0

    def test_a_missed_ping_makes_the_store_not_ready(self) -> None:
        self.reactor.advance(PING_INTERVAL)
        assert self.commands.received() == [[b"PING"]]
        self.reactor.advance(TIMEOUT - 0.01)
        assert self.store.is_ready()
        self.reactor.advance(0.01)
        assert not self.store.is_ready()
        assert not self.commands.aborted  # one missed PING is not enough

    def test_a_connection_missing_several_pings_in_a_row_is_remade(self) -> None:
        first = self.store.commands.protocol
        for missed in range(1, PINGS_BEFORE_RECONNECT + 1):
            self.reactor.advance(PING_INTERVAL - TIMEOUT if missed > 1 else PING_INTERVAL)
            assert self.commands.received() == [[b"PING"]]
            assert not self.commands.aborted
            self.reactor.advance(TIMEOUT)
        assert self.commands.aborted
        assert self.store.commands.protocol is None
        assert not self.store.is_ready()
        self.failureResultOf(self.store.begin(key()), StoreUnavailable)
        # ClientService retries after its (capped) backoff
        self.reactor.advance(MAX_RECONNECT_DELAY)
        again = self.reconnect(2)
        assert self.store.commands.protocol is not None
        assert self.store.commands.protocol is not first
        assert self.store.is_ready()
        d = self.store.begin(key())
        assert again.received()[0][0] == b"MGET"
        again.answer(NO_GENERATIONS)
        self.successResultOf(d)

    def test_a_lost_connection_fails_calls_at_once_and_is_remade_within_the_backoff(self) -> None:
        self.commands.drop()
        assert not self.store.is_ready()
        f = self.failureResultOf(self.store.begin(key()), StoreUnavailable)
        assert "not connected" in f.getErrorMessage()
        self.reactor.advance(MAX_RECONNECT_DELAY)
        self.reconnect(2)
        assert self.store.is_ready()

    def test_a_lost_subscription_clears_the_in_process_tier_once_remade(self) -> None:
        d = self.store.load(key())
        self.commands.answer(b"*2\r\n:0\r\n$%d\r\n%s\r\n" % self.value())
        assert self.successResultOf(d) is not None
        assert self.store.lookup(key()) is not None
        self.pubsub.drop()
        assert not self.store.is_ready()
        # while Redis is away the in-process tier keeps serving
        assert self.store.lookup(key()) is not None
        self.reactor.advance(MAX_RECONNECT_DELAY)
        pubsub = self.reconnect(2)
        assert pubsub.received() == [[b"SUBSCRIBE", b"p:inv"]]
        pubsub.answer(subscribed(b"p:inv"))
        # invalidations sent meanwhile were missed: nothing held is trusted
        assert self.store.lookup(key()) is None
        assert self.store.counters["local_clears"] == 1
        assert self.store.is_ready()

    def value(self) -> tuple[int, bytes]:
        data = encode_entry(entry())
        return len(data), data

    def test_an_invalidation_from_another_instance_reaches_the_in_process_tier(self) -> None:
        d = self.store.load(key())
        self.commands.answer(b"*2\r\n:0\r\n$%d\r\n%s\r\n" % self.value())
        self.successResultOf(d)
        message = b'["other","i","t1","object",["42"]]'
        self.pubsub.answer(b"*3\r\n$7\r\nmessage\r\n$5\r\np:inv\r\n$%d\r\n%s\r\n" % (len(message), message))
        assert self.store.lookup(key()) is None
        assert self.store.counters["invalidations_received"] == 1

    def test_a_miss_polls_while_another_instance_holds_the_lock_then_fetches_itself(self) -> None:
        d = self.store.load(key())
        started = self.reactor.seconds()
        polls = 0
        while self.reactor.seconds() - started < self.store.lock_ttl:
            self.answer_lock_held()
            self.assertNoResult(d)
            polls += 1
            self.reactor.advance(0.02)
        self.answer_lock_held()
        # waited long enough: fetch anyway
        assert self.successResultOf(d) is None
        assert self.store.counters["coalesce_waits"] == polls
        assert 40 <= polls <= 51

    def answer_lock_held(self) -> None:
        """Answer the commands sent: another instance holds the lock."""
        for command, *_ in self.commands.received():
            if command == b"PING":
                self.commands.answer(b"+PONG\r\n")
            else:
                assert command in (b"EVAL", b"EVALSHA")
                self.commands.answer(b"*1\r\n:2\r\n")

    def test_preparing_a_connection_is_bounded(self) -> None:
        reactor = MemoryReactorClock()
        store = RedisStore(reactor, "redis://:pw@127.0.0.1:6379/0", prefix="q", timeout=TIMEOUT)
        store.start()
        commands = RedisEnd(reactor, 0)
        assert commands.received() == [[b"AUTH", b"pw"]]
        reactor.advance(PREPARE_TIMEOUT - 0.01)
        assert not commands.aborted
        reactor.advance(0.01)
        assert commands.aborted  # a Redis that never answers AUTH: try again
        assert store.commands.protocol is None

    def test_close_fires_once_both_connections_are_closed(self) -> None:
        d = self.store.close()
        self.successResultOf(d)
        assert self.commands.transport.connected is False
        assert self.pubsub.transport.connected is False
        assert not self.store.is_ready()
        self.reactor.advance(10 * MAX_RECONNECT_DELAY)
        assert len(self.reactor.tcpClients) == 2  # no reconnection after close


@pytest.mark.parametrize("attempt", [1, 2, 5, 50])
def test_reconnection_backoff_is_capped(attempt: int) -> None:
    assert 0 < retry_delay(attempt) <= MAX_RECONNECT_DELAY
