"""
The upstream client over an in-memory agent (treq's RequestTraversalAgent)
and a task.Clock: URLs, headers, size and time limits, concurrency.
"""

from __future__ import annotations

from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from apicache.upstream import BodyTooLarge, Overloaded, UpstreamClient, UpstreamTimeout, UpstreamUnreachable


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
