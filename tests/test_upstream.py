"""
The upstream: the IUpstream contract, run against the shared
L{apicache.testing.FakeUpstream} and against the real L{UpstreamClient} on
loopback (the real reactor); then the client's own limits over an in-memory
agent (treq's RequestTraversalAgent) and a task.Clock: URLs, headers, size
and time limits, concurrency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from upstream_contract import make_upstream_tests

from apicache.harness.launchers import free_port
from apicache.testing import FakeUpstream
from apicache.upstream.client import (
    BodyTooLarge,
    Overloaded,
    UpstreamClient,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)

Answers = dict[str, tuple[int, Sequence[tuple[bytes, bytes]], bytes]]
#: what an upstream answers a path nobody set
DEFAULT_ANSWER: tuple[int, Sequence[tuple[bytes, bytes]], bytes] = (200, (), b"")


class FakeUpstreamUnderTest:
    """
    The contract's view of a L{FakeUpstream}: answers come from ``auto``;
    held paths stay pending until the test answers them.
    """

    def __init__(self, max_in_flight: int, reachable: bool) -> None:
        self.answers: Answers = {}
        self.held: set[str] = set()
        self.reachable = reachable
        self.upstream = FakeUpstream(max_in_flight, auto=self._auto)

    def _auto(self, path: str, headers: Sequence[tuple[bytes, bytes]]) -> UpstreamResponse | None:
        if not self.reachable:
            raise UpstreamUnreachable("connection refused")
        path = path.split("?")[0]
        if path in self.held:
            return None
        status, answer_headers, body = self.answers.get(path, DEFAULT_ANSWER)
        return UpstreamResponse(status, list(answer_headers), body)

    def answer(self, path: str, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        self.answers[path] = (status, headers, body)

    def hold(self, path: str) -> None:
        self.held.add(path)

    def release(self, count: int) -> None:
        for p in self.upstream.pending[:count]:
            status, headers, body = self.answers.get(p.path.split("?")[0], DEFAULT_ANSWER)
            p.respond(status, body, headers)

    def received(self) -> list[tuple[str, Sequence[tuple[bytes, bytes]]]]:
        return [(p.path, p.headers) for p in self.upstream.fetched]

    def stop(self) -> Deferred[None]:
        self.release(len(self.upstream.pending))
        return self.upstream.close()


class LoopbackUpstream(Resource):
    """
    A twisted.web upstream under ``/api``: answers by path, holds the
    requests of held paths until released, records every request.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answers: Answers = {}
        self.held: set[str] = set()
        self.waiting: DeferredQueue[Request] = DeferredQueue()
        self.unfinished: list[Request] = []
        self.requests: list[tuple[str, list[tuple[bytes, bytes]]]] = []

    def render_GET(self, request: Request) -> bytes | int:
        path = request.uri.decode("ascii").removeprefix("/api")
        headers = [(k.lower(), v) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        self.requests.append((path, headers))
        if path.split("?")[0] in self.held:
            self.unfinished.append(request)
            self.waiting.put(request)
            return NOT_DONE_YET
        return self.write_answer(request)

    def write_answer(self, request: Request) -> bytes:
        status, headers, body = self.answers.get(request.path.decode("ascii").removeprefix("/api"), DEFAULT_ANSWER)
        request.setResponseCode(status)
        for name, value in headers:
            request.responseHeaders.addRawHeader(name, value)
        return body

    async def release(self, count: int) -> None:
        for _ in range(count):
            request = await self.waiting.get().addTimeout(10, reactor)
            self.finish(request)

    def finish(self, request: Request) -> None:
        self.unfinished.remove(request)
        if not request._disconnected:
            request.write(self.write_answer(request))
            request.finish()


class ClientUnderTest:
    """
    The contract's view of a real L{UpstreamClient} on the real reactor,
    fetching from a L{LoopbackUpstream} (or from a port nobody listens on).
    """

    def __init__(self, upstream: UpstreamClient, server: LoopbackUpstream, port: Any) -> None:
        self.upstream = upstream
        self.server = server
        self.port = port

    @classmethod
    async def listen(cls, max_in_flight: int, reachable: bool) -> ClientUnderTest:
        server = LoopbackUpstream()
        port = None
        if reachable:
            port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(server))
            number = port.getHost().port
        else:
            number = free_port()
        client = UpstreamClient(
            reactor,
            f"http://127.0.0.1:{number}/api",
            timeout=10.0,
            max_body_bytes=1 << 20,
            max_connections=4,
            max_in_flight=max_in_flight,
        )
        return cls(client, server, port)

    def answer(self, path: str, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        self.server.answers[path] = (status, headers, body)

    def hold(self, path: str) -> None:
        self.server.held.add(path)

    def release(self, count: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self.server.release(count))

    def received(self) -> list[tuple[str, list[tuple[bytes, bytes]]]]:
        return self.server.requests

    async def stop(self) -> None:
        # a fetch cut off by closing the port would fail where no test sees
        # it: first answer every fetch still in flight (a test that failed
        # half-way leaves some)
        for _ in range(500):
            for request in list(self.server.unfinished):
                self.server.finish(request)
            if not self.upstream.in_flight:
                break
            await deferLater(reactor, 0.01, lambda: None)
        await self.upstream.close()
        if self.port is not None:
            await self.port.stopListening()


class TestFakeUpstreamContract(
    make_upstream_tests(lambda request, max_in_flight, reachable: FakeUpstreamUnderTest(max_in_flight, reachable))
):
    pass


class TestUpstreamClientContract(
    make_upstream_tests(lambda request, max_in_flight, reachable: ClientUnderTest.listen(max_in_flight, reachable))
):
    """The contract, on the real client over loopback."""


class Upstream(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.body = b"hello"
        self.status = 200
        self.headers = {b"content-type": [b"text/plain"], b"set-cookie": [b"a=1", b"b=2"]}
        self.hang = False
        self.partial = False

    def render_GET(self, request):
        self.requests.append(request)
        request.setResponseCode(self.status)
        for k, vs in self.headers.items():
            request.responseHeaders.setRawHeaders(k, vs)
        if self.hang:
            return NOT_DONE_YET
        if self.partial:
            request.setHeader(b"content-length", b"100")
            request.write(b"x" * 10)
            return NOT_DONE_YET
        return self.body


class Tests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.resource = Upstream()
        self.agent = RequestTraversalAgent(self.resource)
        self.client = UpstreamClient(
            self.clock,
            "http://up.example/api/",
            timeout=5.0,
            max_body_bytes=1000,
            max_connections=4,
            max_in_flight=2,
            agent=self.agent,
        )

    def fetch(self, path="/object(1)/header?a=1", headers=((b"authorization", b"Bearer t"),)):
        d = self.client.fetch(path, list(headers), tenant="acme")
        self.agent.flush()
        return d

    def test_fetches_base_url_plus_path_with_the_headers(self):
        r = self.successResultOf(self.fetch())
        req = self.resource.requests[0]
        assert req.uri == b"/api/object(1)/header?a=1"
        assert req.requestHeaders.getRawHeaders(b"authorization") == [b"Bearer t"]
        assert (r.status, r.body) == (200, b"hello")
        assert r.header(b"set-cookie") == [b"a=1", b"b=2"]
        assert r.header(b"content-type") == [b"text/plain"]
        assert self.client.in_flight == 0

    def test_redirect_is_returned_not_followed(self):
        self.resource.status = 302
        self.resource.headers[b"location"] = [b"http://up.example/elsewhere"]
        r = self.successResultOf(self.fetch())
        assert r.status == 302
        assert len(self.resource.requests) == 1

    def test_body_over_the_limit_fails(self):
        self.resource.body = b"x" * 1001
        self.failureResultOf(self.fetch(), BodyTooLarge)
        assert self.client.in_flight == 0

    def test_body_at_the_limit_is_fine(self):
        self.resource.body = b"x" * 1000
        assert self.successResultOf(self.fetch()).body == b"x" * 1000

    def test_no_answer_within_the_timeout(self):
        self.resource.hang = True
        d = self.fetch()
        self.assertNoResult(d)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, UpstreamTimeout)
        assert self.client.in_flight == 0

    def test_timeout_covers_the_whole_body(self):
        self.resource.partial = True
        d = self.fetch()
        self.assertNoResult(d)
        self.clock.advance(5.1)
        self.failureResultOf(d, UpstreamTimeout)

    def test_in_flight_is_bounded(self):
        self.resource.hang = True
        first, second = self.fetch(), self.fetch()
        # an errback, never a synchronous raise (IUpstream)
        self.failureResultOf(self.client.fetch("/x", [], tenant="acme"), Overloaded)
        self.clock.advance(6)
        self.failureResultOf(first, UpstreamTimeout)
        self.failureResultOf(second, UpstreamTimeout)
        assert self.client.in_flight == 0
        self.resource.hang = False
        self.successResultOf(self.fetch())

    def test_failure_to_connect_is_unreachable(self):
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        class Refusing:
            def request(self, *a, **k):
                return fail(ConnectionRefusedError())

        client = UpstreamClient(self.clock, "http://u", 5.0, 10, 1, 1, agent=Refusing())
        self.failureResultOf(client.fetch("/x", [], tenant="acme"), UpstreamUnreachable)
        assert client.in_flight == 0
