"""
What apicache sends upstream (SPEC.md sections 2 to 4): ``Via``,
``set_headers`` (never overridden, never logged), the tracing headers
(always forwarded, never keyed), ``unkeyed_headers``, and a write's method
and body; checked on the real L{UpstreamClient}, wrapped as the daemon
wraps it (L{IntermediaryUpstream}), over treq's in-memory agent, and through the whole site (raw HTTP bytes in, a StringTransport
out) so that the request's own trace is what the upstream sees.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from apicache.cache.links import LinkTargets
from apicache.config import parse_config
from apicache.harness.launchers import free_port
from apicache.testing import InMemoryAPI
from apicache.upstream.client import UpstreamClient, UpstreamTimeout, UpstreamUnreachable
from apicache.upstream.intermediary import IntermediaryUpstream
from apicache.upstream.requestheaders import VIA

SECRET = "s3cr3t-upstream-key"
ROUTES = [
    {
        "type": "object",
        "path": "/server/object(<id>)/header",
        "upstream": "/object({id})/header",
        "ttl": 10,
        "pass_methods": ["POST", "DELETE"],
    },
]


class Recorder(Resource):
    """An upstream that records each request and answers what it is told."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]] = []
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]

    def render(self, request):
        headers = {k.lower(): vs for k, vs in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.method, request.uri, headers, request.content.read()))
        request.setResponseCode(self.status)
        for name, value in self.headers:
            request.responseHeaders.addRawHeader(name, value)
        return b"{}"


def config(upstream=None, server=None):
    data = {
        "server": {"api_keys": ["k1"], **(server or {})},
        "upstream": {"base_url": "http://up.example/api", **(upstream or {})},
        "routes": ROUTES,
    }
    return parse_config(data, "test.toml", {})


class Wire(InMemoryAPI):
    """
    The whole site in-process over the real upstream client, whose agent
    traverses a L{Recorder}.
    """

    def __init__(self, upstream=None, server=None):
        clock = Clock()
        clock.advance(100)
        settings = config(upstream, server)
        self.recorder = Recorder()
        self.agent = RequestTraversalAgent(self.recorder)
        up = settings.upstream
        self.client = UpstreamClient(
            clock,
            up.base_url,
            timeout=5.0,
            max_body_bytes=1 << 20,
            max_connections=4,
            max_in_flight=8,
            agent=self.agent,
        )
        intermediary = IntermediaryUpstream(self.client, up.set_headers, LinkTargets(up.base_url, settings.routes))
        super().__init__(settings, upstream=intermediary, clock=clock, access_log=True)

    def send(self, method=b"GET", path=b"/server/object(42)/header", headers=(), body=None, chunked=False):
        """Return (status, {name: value}, body) of one answer to raw HTTP."""
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        head = b"%s %s HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\n" % (method, path)
        head += b"".join(b"%s: %s\r\n" % h for h in headers)
        if body is not None and chunked:
            head += b"transfer-encoding: chunked\r\n\r\n"
            for i in range(0, len(body), 4):
                part = body[i : i + 4]
                head += b"%x\r\n%s\r\n" % (len(part), part)
            head += b"0\r\n\r\n"
        elif body is not None:
            head += b"content-length: %d\r\n\r\n%s" % (len(body), body)
        else:
            head += b"\r\n"
        protocol.dataReceived(head)
        self.agent.flush()
        out = transport.value()
        protocol.connectionLost(None)
        top, _, rest = out.partition(b"\r\n\r\n")
        lines = top.split(b"\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b": ")
            fields.setdefault(name.lower(), []).append(value)
        if fields.get(b"transfer-encoding") == [b"chunked"]:
            body = b""
            while True:
                size, _, rest = rest.partition(b"\r\n")
                if int(size, 16) == 0:
                    break
                body, rest = body + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
            rest = body
        return int(lines[0].split(b" ")[1]), fields, rest


class TestVia(SynchronousTestCase):
    def test_every_upstream_request_carries_via(self):
        wire = Wire()
        wire.send(headers=[(b"via", b"1.0 caller")])
        wire.send(b"POST", body=b"x")
        wire.send(b"DELETE")
        assert [r[2][b"via"] for r in wire.recorder.requests] == [[VIA]] * 3
        assert VIA == b"1.1 apicache"


class TestSetHeaders(SynchronousTestCase):
    def test_set_headers_reach_every_request_and_callers_cant_override_them(self):
        wire = Wire({"set_headers": {"x-api-key": SECRET, "user-agent": "apicache"}, "forward_headers": ["user-agent"]})
        wire.send(headers=[(b"x-api-key", b"mine"), (b"user-agent", b"curl")])
        wire.send(b"POST", body=b"{}", headers=[(b"x-api-key", b"mine"), (b"user-agent", b"curl")])
        for _, _, headers, _ in wire.recorder.requests:
            assert headers[b"x-api-key"] == [SECRET.encode()]
            assert headers[b"user-agent"] == [b"apicache"]

    def test_set_headers_are_part_of_the_route_fingerprint(self):
        a = config({"set_headers": {"x-api-key": "a"}}).routes[0].fingerprint
        b = config({"set_headers": {"x-api-key": "b"}}).routes[0].fingerprint
        assert a != b and a == config({"set_headers": {"x-api-key": "a"}}).routes[0].fingerprint

    def test_set_header_values_are_never_logged(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            wire = Wire({"set_headers": {"x-api-key": SECRET}})
            wire.send()
            wire.send(b"POST", body=b"x")
            wire.recorder.status = 500
            wire.send(path=b"/server/object(43)/header")
            wire.send(b"POST", body=b"x", path=b"/server/object(44)/header")
        finally:
            globalLogPublisher.removeObserver(events.append)
        assert [e for e in events if e.get("status")], "the access log was written"
        for event in events:
            assert SECRET not in repr(event) and SECRET not in (formatEvent(event) or "")
        assert SECRET not in repr(wire.config)


class TestTracing(SynchronousTestCase):
    PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    def test_trace_headers_are_forwarded_with_this_requests_span(self):
        wire = Wire({"forward_headers": ["accept"]})
        wire.send(headers=[(b"traceparent", self.PARENT), (b"tracestate", b"v=1")])
        headers = wire.recorder.requests[-1][2]
        version, trace_id, span, flags = headers[b"traceparent"][0].split(b"-")
        assert (version, trace_id, flags) == (b"00", b"0af7651916cd43dd8448eb211c80319c", b"01")
        assert span != b"b7ad6b7169203331"
        assert headers[b"tracestate"] == [b"v=1"]

    def test_a_request_without_a_trace_starts_one(self):
        wire = Wire()
        wire.send(b"POST", body=b"x")
        assert len(wire.recorder.requests[-1][2][b"traceparent"][0].split(b"-")) == 4

    def test_trace_headers_are_never_keyed(self):
        wire = Wire()
        _, h, _ = wire.send(headers=[(b"traceparent", self.PARENT), (b"tracestate", b"v=1")])
        assert h[b"x-cache"] == [b"MISS"]
        _, h, _ = wire.send(headers=[(b"tracestate", b"v=2")])
        assert h[b"x-cache"] == [b"HIT"]
        assert len(wire.recorder.requests) == 1


class TestUnkeyedHeaders(SynchronousTestCase):
    def test_default_unkeyed_headers_share_entries(self):
        wire = Wire()
        wire.send(headers=[(b"authorization", b"Bearer a")])
        _, h, _ = wire.send(headers=[(b"authorization", b"Bearer b")])
        assert h[b"x-cache"] == [b"HIT"]
        _, h, _ = wire.send(headers=[(b"accept", b"text/plain")])
        assert h[b"x-cache"] == [b"MISS"]

    def test_explicit_unkeyed_headers(self):
        wire = Wire({"forward_headers": ["authorization", "accept"], "unkeyed_headers": ["accept"]})
        wire.send(headers=[(b"authorization", b"Bearer a"), (b"accept", b"a")])
        _, h, _ = wire.send(headers=[(b"authorization", b"Bearer a"), (b"accept", b"b")])
        assert h[b"x-cache"] == [b"HIT"]
        _, h, _ = wire.send(headers=[(b"authorization", b"Bearer b"), (b"accept", b"a")])
        assert h[b"x-cache"] == [b"MISS"]
        # both were forwarded, keyed or not
        assert wire.recorder.requests[-1][2][b"accept"] == [b"a"]


class TestWriteRequests(SynchronousTestCase):
    def test_method_body_and_content_length_reach_the_upstream(self):
        wire = Wire()
        wire.recorder.status = 201
        status, h, _ = wire.send(b"POST", body=b'{"a": 1}', headers=[(b"content-type", b"application/json")])
        assert status == 201
        method, uri, headers, body = wire.recorder.requests[-1]
        assert (method, uri, body) == (b"POST", b"/api/object(42)/header", b'{"a": 1}')
        assert headers[b"content-length"] == [b"8"]
        assert headers[b"content-type"] == [b"application/json"]
        assert h[b"cache-status"] == [b"apicache;fwd=method"]

    def test_a_chunked_body_is_forwarded_whole(self):
        wire = Wire()
        wire.send(b"POST", body=b"0123456789", chunked=True)
        assert wire.recorder.requests[-1][3] == b"0123456789"

    def test_a_chunked_body_over_the_limit_is_413(self):
        wire = Wire(server={"max_body_bytes": 8})
        status, _, body = wire.send(b"POST", body=b"0123456789", chunked=True)
        assert (status, json.loads(body)["error"]) == (413, "body_too_large")
        assert wire.recorder.requests == []

    def test_a_bodiless_delete_is_sent_with_an_empty_body(self):
        """An empty body producer: twisted.web's pool never retries it."""
        wire = Wire()
        wire.send(b"DELETE")
        method, _, headers, body = wire.recorder.requests[-1]
        assert (method, body, headers[b"content-length"]) == (b"DELETE", b"", [b"0"])

    def test_link_headers_of_a_write_answer_are_rewritten(self):
        wire = Wire()
        wire.recorder.status = 201
        wire.recorder.headers = [(b"location", b"http://up.example/api/object(43)/header")]
        status, h, _ = wire.send(b"POST", body=b"{}")
        assert (status, h[b"location"]) == (201, [b"/server/object(43)/header"])


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_was_never_sent():
    client = UpstreamClient(reactor, f"http://127.0.0.1:{free_port()}", 5.0, 1000, 2, 2)
    try:
        with pytest.raises(UpstreamUnreachable) as e:
            await client.fetch("/x", [], tenant="t1", method=b"POST", body=b"body")
        assert e.value.sent is False
    finally:
        await client.close()


def test_a_deadline_keeps_whether_the_request_was_sent():
    clock = Clock()

    class Hang(Resource):
        isLeaf = True

        def render(self, request):
            from twisted.web.server import NOT_DONE_YET

            return NOT_DONE_YET

    agent = RequestTraversalAgent(Hang())
    client = UpstreamClient(clock, "http://up/api", 5.0, 1000, 2, 2, agent=agent)
    d = client.fetch("/x", [], tenant="t1", method=b"POST", body=b"body")
    agent.flush()
    clock.advance(5)
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(UpstreamTimeout)
    assert failure[0].value.sent is True


class TestIntermediaryUpstream(SynchronousTestCase):
    def make(self, set_headers=None):
        from apicache.testing import FakeUpstream

        fake = FakeUpstream()
        cfg = config({"set_headers": set_headers or {}})
        return fake, IntermediaryUpstream(fake, cfg.upstream.set_headers, LinkTargets(cfg.upstream.base_url, cfg.routes))

    def test_callers_values_for_apicaches_names_are_dropped_whatever_their_case(self):
        fake, up = self.make({"X-Api-Key": SECRET})
        up.fetch("/p", [(b"X-API-KEY", b"mine"), (b"Via", b"1.0 other"), (b"accept", b"a")], tenant="t1", method=b"PATCH", body=b"b")
        sent = fake.fetched[-1]
        assert sent.headers == [(b"accept", b"a"), (b"x-api-key", SECRET.encode()), (b"via", VIA)]
        assert (sent.method, sent.body) == (b"PATCH", b"b")

    def test_answers_links_are_rewritten_and_others_untouched(self):
        fake, up = self.make()
        moved = up.fetch("/p", [], tenant="t1")
        fake.pending[-1].respond(301, b"", [(b"location", b"http://up.example/api/object(7)/header")])
        assert self.successResultOf(moved).headers == [(b"location", b"/server/object(7)/header")]
        plain = up.fetch("/p", [], tenant="t1")
        fake.pending[-1].respond(200, b"{}", [(b"content-type", b"application/json")])
        assert self.successResultOf(plain).headers == [(b"content-type", b"application/json")]
        assert up.in_flight == 0


# -- built in one place (apicache.upstream.requestheaders) ---------------------


def test_the_caller_s_part_is_the_forwarded_names_our_span_and_the_normalised_encoding():
    from twisted.web.http_headers import Headers

    from apicache.upstream.requestheaders import CallerHeaders

    caller = Headers(
        {b"accept": [b"a"], b"traceparent": [b"00-caller"], b"accept-encoding": [b"br"], b"cookie": [b"c"], b"if-match": [b"x"]}
    )
    assert CallerHeaders(["accept", "traceparent"]).of(caller, b"00-ours", b"identity") == [
        (b"accept", b"a"),
        (b"traceparent", b"00-ours"),
        (b"accept-encoding", b"identity"),
    ]
    # a write adds its own names; without a trace the caller's traceparent goes on
    assert CallerHeaders(["traceparent"]).of(caller, None, b"gzip", (b"if-match",)) == [
        (b"traceparent", b"00-caller"),
        (b"if-match", b"x"),
        (b"accept-encoding", b"gzip"),
    ]


def test_validators_follow_the_caller_s_part_and_none_leave_it_as_it_is():
    from apicache.upstream.requestheaders import with_validators

    caller = [(b"accept", b"a")]
    assert with_validators(caller, []) is caller
    assert with_validators(caller, [(b"if-none-match", b'"e"')]) == [(b"accept", b"a"), (b"if-none-match", b'"e"')]


def test_set_headers_and_via_come_last_and_replace_a_caller_s_value():
    from apicache.upstream.requestheaders import VIA, FixedHeaders

    fixed = FixedHeaders({"X-Api-Key": "s"})
    assert fixed.added_to([(b"x-api-key", b"caller's"), (b"Via", b"1.0 other"), (b"accept", b"a")]) == [
        (b"accept", b"a"),
        (b"x-api-key", b"s"),
        (b"via", VIA),
    ]
