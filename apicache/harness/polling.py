"""
Waiting for a real process to get somewhere: the one polling loop that
tests, launchers and demos share.

A test that drives a real process (the daemon, ``redis-server``, the
Kafka broker, a loopback upstream) cannot advance that process's clock, so
it asks again until the answer comes or a deadline passes.  In-memory
tests have no reason to poll: they advance a C{task.Clock} instead (see
L{apicache.testing}).

L{wait_until} blocks the calling thread (for tests that need no reactor);
L{wait_until_async} lets a reactor run between tries (for tests under
C{pytest_twisted} whose real process talks to in-process Twisted code).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

__all__ = ["WaitTimeout", "What", "wait_until", "wait_until_async"]

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """
    What was waited for did not happen in time.  An C{AssertionError}, so
    that a test reports it as a failure, not as an error of its own code.
    """


#: What is waited for, in words: a string, or a callable returning one when
#: the wait fails (so that the error can carry, say, a process's last log
#: lines as they are then).
What = str | Callable[[], str]


def _timed_out(what: What, value: object, timeout: float) -> WaitTimeout:
    described = what() if callable(what) else what
    return WaitTimeout(f"waited {timeout} s for {described}; still {value!r}")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: What = "the condition") -> T:
    """
    Call C{predicate} every C{interval} seconds until it returns a true
    value, blocking the calling thread.

    C{predicate} is called at least once, and once more after the deadline,
    so a slow machine's last try still counts.  An exception it raises (a
    process that exited, say) ends the wait at once.

    @param timeout: seconds of wall-clock time to wait at most.
    @param what: what is waited for, in words, for the error (see L{What}).
    @return: the first true value C{predicate} returned.
    @raise WaitTimeout: C{predicate} was still false after C{timeout}
        seconds; the message names C{what} and the last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, value, timeout)
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.01,
    what: What = "the condition",
    clock: IReactorTime | None = None,
) -> T:
    """
    As L{wait_until}, but letting C{clock} (the global reactor by default)
    run between tries.

    @param clock: what measures the deadline and the intervals; the tests
        that use this run under the global reactor, which is the default
        (imported only then, so that importing this module installs none).
    @return: (a coroutine returning) the first true value C{predicate}
        returned.
    @raise WaitTimeout: as L{wait_until}.
    """
    if clock is None:
        from twisted.internet import reactor

        clock = reactor  # type: ignore[assignment]
    assert clock is not None
    deadline = clock.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if clock.seconds() > deadline:
            raise _timed_out(what, value, timeout)
        await deferLater(clock, interval, lambda: None)
