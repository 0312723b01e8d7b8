"""
The upstream contract: ``make_upstream_tests(fixture)`` returns a test class
that every L{apicache.upstream.client.IUpstream} runs, the in-memory
L{apicache.testing.FakeUpstream} included, so that tests written against the
fake hold for the real client.

``fixture`` is a callable ``fixture(request, max_in_flight, reachable)``
returning an L{UpstreamUnderTest} (or a Deferred or coroutine firing with
one): the upstream, and the server side it fetches from.  With
``reachable=False`` the upstream's fetches cannot connect.  ``request`` is
pytest's fixture request.  Every test is a coroutine run by pytest-twisted,
so an upstream whose Deferreds fire later (the real client on loopback) runs
the same tests as the fake::

    from upstream_contract import make_upstream_tests

    class TestFakeUpstreamContract(make_upstream_tests(fake_upstream)):
        pass
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList
from zope.interface.verify import verifyObject

from apicache.upstream.client import IUpstream, Overloaded, UpstreamResponse, UpstreamUnreachable

__all__ = ["make_upstream_tests", "UpstreamUnderTest"]

Headers = Sequence[tuple[bytes, bytes]]


class UpstreamUnderTest(Protocol):
    """
    An upstream and a handle on what it fetches from.
    """

    #: the L{IUpstream} the contract checks
    upstream: Any

    def answer(self, path: str, status: int, headers: Headers, body: bytes) -> None:
        """
        Answer fetches of ``path`` (query excluded) so from now on; other
        paths get ``200`` and an empty body.
        """

    def hold(self, path: str) -> None:
        """
        Leave fetches of ``path`` unanswered until L{release}.
        """

    def release(self, count: int) -> Deferred[None] | None:
        """
        Answer the first ``count`` held fetches (waiting until they arrived).
        """

    def received(self) -> list[tuple[str, Headers]]:
        """
        Return each request the server side got: the path after the base
        URL (query included) and the headers (lower-case names).
        """

    def stop(self) -> Deferred[None] | None:
        """
        Release what is held, close the upstream and the server side.
        """


async def resolve(value: Any) -> Any:
    """
    Return ``value``, awaited if it is a Deferred or a coroutine.
    """
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await value
    return value


async def failure_of(d: Deferred[Any], kind: type[Exception]) -> Exception:
    """
    Return the exception ``d`` fails with, which must be a ``kind``.
    """
    with pytest.raises(kind) as e:
        await d
    return e.value


def make_upstream_tests(fixture: Callable[[Any, int, bool], Any]) -> type:
    """
    Return a pytest test class (name it ``Test...`` in the calling module)
    running the L{IUpstream} contract against upstreams made by ``fixture``.
    """

    class UpstreamContract:
        @asynccontextmanager
        async def under_test(
            self, request: Any, max_in_flight: int = 8, reachable: bool = True
        ) -> AsyncIterator[UpstreamUnderTest]:
            u = await resolve(fixture(request, max_in_flight, reachable))
            try:
                yield u
            finally:
                await resolve(u.stop())

        @pytest_twisted.ensureDeferred
        async def test_provides_the_interface_with_nothing_in_flight(self, request: Any) -> None:
            async with self.under_test(request) as u:
                assert verifyObject(IUpstream, u.upstream)
                assert u.upstream.in_flight == 0

        @pytest_twisted.ensureDeferred
        async def test_fetch_fires_with_the_whole_answer(self, request: Any) -> None:
            async with self.under_test(request) as u:
                u.answer("/object(1)/header", 200, [(b"Content-Type", b"application/json")], b'{"a": 1}')
                d = u.upstream.fetch("/object(1)/header", [], tenant="t1")
                assert isinstance(d, Deferred)
                r = await d
                assert isinstance(r, UpstreamResponse)
                assert (r.status, r.body) == (200, b'{"a": 1}')
                assert r.header(b"content-type") == [b"application/json"]

        @pytest_twisted.ensureDeferred
        async def test_headers_are_lower_case_byte_pairs_with_repeats_kept(self, request: Any) -> None:
            async with self.under_test(request) as u:
                u.answer("/h", 200, [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"X-Thing", b"x")], b"")
                r = await u.upstream.fetch("/h", [], tenant="t1")
                for name, value in r.headers:
                    assert isinstance(name, bytes) and isinstance(value, bytes)
                    assert name == name.lower()
                assert r.header(b"set-cookie") == [b"a=1", b"b=2"]
                assert r.header(b"x-thing") == [b"x"]

        @pytest_twisted.ensureDeferred
        async def test_the_connection_field_is_among_the_headers(self, request: Any) -> None:
            """
            SPEC.md section 3 (v3): the cache drops the upstream's
            C{Connection} and the fields it names, so it must see it
            (Twisted's client parser keeps it apart from the other headers).
            """
            async with self.under_test(request) as u:
                u.answer("/c", 200, [(b"Connection", b"X-Hop"), (b"X-Hop", b"1"), (b"X-End", b"2")], b"")
                r = await u.upstream.fetch("/c", [], tenant="t1")
                assert r.header(b"connection") == [b"X-Hop"]
                assert r.header(b"x-hop") == [b"1"]
                # the connection stays usable: the field named no option it acts on
                assert (await u.upstream.fetch("/c", [], tenant="t1")).header(b"connection") == [b"X-Hop"]

        @pytest_twisted.ensureDeferred
        async def test_path_query_and_headers_reach_the_upstream(self, request: Any) -> None:
            async with self.under_test(request) as u:
                headers = [(b"authorization", b"Bearer t"), (b"accept-language", b"de")]
                await u.upstream.fetch("/object(1)/header?a=1&b=%2F", headers, tenant="t1")
                [(path, got)] = u.received()
                assert path == "/object(1)/header?a=1&b=%2F"
                assert (b"authorization", b"Bearer t") in got
                assert (b"accept-language", b"de") in got

        @pytest_twisted.ensureDeferred
        async def test_error_statuses_and_redirects_are_answers(self, request: Any) -> None:
            async with self.under_test(request) as u:
                u.answer("/gone", 404, [], b"no")
                u.answer("/busy", 503, [], b"later")
                u.answer("/moved", 302, [(b"location", b"/elsewhere")], b"")
                assert (await u.upstream.fetch("/gone", [], tenant="t1")).status == 404
                assert (await u.upstream.fetch("/busy", [], tenant="t1")).body == b"later"
                moved = await u.upstream.fetch("/moved", [], tenant="t1")
                assert (moved.status, moved.header(b"location")) == (302, [b"/elsewhere"])
                assert [p for p, _ in u.received()] == ["/gone", "/busy", "/moved"]

        @pytest_twisted.ensureDeferred
        async def test_in_flight_counts_unanswered_fetches(self, request: Any) -> None:
            async with self.under_test(request) as u:
                u.hold("/slow")
                fetches = [u.upstream.fetch("/slow", [], tenant="t1"), u.upstream.fetch("/slow", [], tenant="t1")]
                assert u.upstream.in_flight == 2
                await resolve(u.release(1))
                # the upstream may take the two requests in either order
                answer, index = await DeferredList(fetches, fireOnOneCallback=True, fireOnOneErrback=True)
                assert answer.status == 200
                assert u.upstream.in_flight == 1
                await resolve(u.release(1))
                await fetches[1 - index]
                assert u.upstream.in_flight == 0

        @pytest_twisted.ensureDeferred
        async def test_overloaded_is_an_errback_never_raised(self, request: Any) -> None:
            """
            At ``max_in_flight``, fetch returns a Deferred failing with
            L{Overloaded}; the fetches in flight go on, and once one ends a
            new fetch is accepted.
            """
            async with self.under_test(request, max_in_flight=2) as u:
                u.hold("/slow")
                first, second = u.upstream.fetch("/slow", [], tenant="t1"), u.upstream.fetch("/slow", [], tenant="t1")
                third = u.upstream.fetch("/slow", [], tenant="t1")
                assert isinstance(third, Deferred)
                await failure_of(third, Overloaded)
                assert u.upstream.in_flight == 2
                await resolve(u.release(2))
                assert [(await first).status, (await second).status] == [200, 200]
                assert u.upstream.in_flight == 0
                assert (await u.upstream.fetch("/fast", [], tenant="t1")).status == 200
                assert len(u.received()) == 3

        @pytest_twisted.ensureDeferred
        async def test_failure_to_connect_is_an_unreachable_errback(self, request: Any) -> None:
            async with self.under_test(request, reachable=False) as u:
                d = u.upstream.fetch("/x", [], tenant="t1")
                assert isinstance(d, Deferred)
                await failure_of(d, UpstreamUnreachable)
                assert u.upstream.in_flight == 0

        @pytest_twisted.ensureDeferred
        async def test_close_fires(self, request: Any) -> None:
            async with self.under_test(request) as u:
                await u.upstream.fetch("/x", [], tenant="t1")
                assert await u.upstream.close() is None

    return UpstreamContract
