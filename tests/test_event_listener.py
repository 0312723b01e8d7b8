"""
The listener service's own life cycle, with its real consumer thread but no
broker (nothing listens at its bootstrap address) and a fake reactor that
collects what the thread hands over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from apicache.cache import CacheRegistry
from apicache.config import KafkaConfig
from apicache.events import EventDecoder, EventHandler, EventListenerService
from apicache.launchers import free_port
from apicache.store import MemoryStore


class ThreadCollectingClock(Clock):
    """A Clock that also takes calls from other threads, to run later."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.handed.append((f, args, kwargs))

    def run_handed(self) -> None:
        handed, self.handed = self.handed, []
        for f, args, kwargs in handed:
            f(*args, **kwargs)


class FakeCredentials:
    username = "client-id"

    def __init__(self) -> None:
        self.ready: Deferred[str] = Deferred()
        self.subscribers: list[Callable[[str], None]] = []

    def when_ready(self) -> Deferred[str]:
        return self.ready

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self.subscribers.append(callback)


def listener(reactor: ThreadCollectingClock, credentials: Any = None) -> EventListenerService:
    kafka = KafkaConfig(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        topics=("t",),
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="client-id",
    )
    registry = CacheRegistry(MemoryStore(1 << 20), None, reactor, [], ())  # type: ignore[arg-type]
    return EventListenerService(kafka, EventHandler(EventDecoder((), ()), registry, reactor), reactor, "host", credentials)


def test_the_consumer_waits_for_the_first_token_and_gets_renewed_ones() -> None:
    reactor = ThreadCollectingClock()
    creds = FakeCredentials()
    svc = listener(reactor, creds)
    svc.startService()
    assert svc._thread is None
    creds.ready.callback("token-1")
    assert svc._thread is not None and svc._thread.is_alive()
    assert svc.settings["sasl.password"] == "token-1"
    for renewed in creds.subscribers:
        renewed("token-2")
    deadline = time.monotonic() + 3
    while svc._new_password is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert svc._new_password is None, "the consumer thread took the renewed token"
    stopped = svc.stopService()
    svc._thread.join(5)
    assert not svc._thread.is_alive()
    failures = [args for f, args, _ in reactor.handed if f == svc.log.failure]
    assert failures == [], "the consumer thread hit an error"
    reactor.run_handed()
    assert stopped.called
    assert not svc.is_ready()


def test_stopping_before_the_first_token_starts_nothing() -> None:
    reactor = ThreadCollectingClock()
    creds = FakeCredentials()
    svc = listener(reactor, creds)
    svc.startService()
    assert svc.stopService().called
    creds.ready.callback("late")
    assert svc._thread is None


def test_stop_fires_within_five_seconds_even_if_the_thread_hangs() -> None:
    reactor = ThreadCollectingClock()
    svc = listener(reactor)
    svc.startService()
    stopped = svc.stopService()
    # the thread's own "finished" call is never run: only the timer can fire it
    reactor.advance(4.9)
    assert not stopped.called
    reactor.advance(0.1)
    assert stopped.called
    assert svc._thread is not None
    svc._thread.join(5)
