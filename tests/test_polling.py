"""
The one polling helper (L{apicache.harness.polling}): what it returns, when
it gives up and what its error says.  The blocking form is checked with a
deadline already past or a predicate that comes true at once, the reactor
form with a L{Clock}, so no check here waits on the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from apicache.harness.polling import WaitTimeout, wait_until, wait_until_async


def counting(results: list[object]) -> tuple[Callable[[], object], list[int]]:
    """
    Return a predicate answering ``results`` one after the other, and the
    list its call count is kept in.
    """
    calls = [0]

    def predicate() -> object:
        calls[0] += 1
        return results[min(calls[0], len(results)) - 1]

    return predicate, calls


def test_returns_the_first_true_value() -> None:
    predicate, calls = counting([0, None, "", {"ready": True}])
    assert wait_until(predicate, 60, 0, "readiness") == {"ready": True}
    assert calls == [4]


def test_a_deadline_passed_fails_after_one_try_naming_what_and_the_last_value() -> None:
    predicate, calls = counting([[]])
    with pytest.raises(WaitTimeout) as caught:
        wait_until(predicate, -1, 0, "the token to be fetched")
    assert calls == [1]
    assert str(caught.value) == "waited -1 s for the token to be fetched; still []"
    assert isinstance(caught.value, AssertionError)


def test_what_may_be_computed_when_the_wait_fails() -> None:
    seen: list[str] = []
    with pytest.raises(WaitTimeout, match="the daemon to answer: log tail"):
        wait_until(lambda: seen.append("tried"), -1, 0, lambda: f"the daemon to answer: log tail {len(seen)}")
    assert seen == ["tried"]


def test_an_error_of_the_predicate_ends_the_wait() -> None:
    def exited() -> bool:
        raise RuntimeError("exited with 1")

    with pytest.raises(RuntimeError, match="exited with 1"):
        wait_until(exited, 60, 0)


class WaitUntilAsyncTests(SynchronousTestCase):
    def test_lets_the_clock_run_between_tries(self) -> None:
        clock = Clock()
        state: list[str] = []
        d = Deferred.fromCoroutine(wait_until_async(lambda: state and state[0], 5.0, 0.5, "a state", clock))
        self.assertNoResult(d)
        clock.advance(0.5)
        self.assertNoResult(d)
        state.append("up")
        clock.advance(0.5)
        self.assertEqual(self.successResultOf(d), "up")

    def test_fails_once_the_clock_passed_the_deadline(self) -> None:
        clock = Clock()
        tries = [0]

        def never() -> bool:
            tries[0] += 1
            return False

        d = Deferred.fromCoroutine(wait_until_async(never, 1.0, 0.25, "the store to connect", clock))
        clock.pump([0.25] * 4)
        self.assertNoResult(d)
        clock.advance(0.25)
        failure = self.failureResultOf(d, WaitTimeout)
        self.assertEqual(str(failure.value), "waited 1.0 s for the store to connect; still False")
        # at 0, 0.25, 0.5, 0.75, 1.0 (not past yet) and 1.25
        self.assertEqual(tries, [6])
