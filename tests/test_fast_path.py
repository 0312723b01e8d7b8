"""
The fast hit path (apicache.http.fast, issue 23) on the bytes of the wire:
a real ApiSite over a StringTransport, with a real registry, memory store,
fake upstream and a task.Clock.

The differential property: the same bytes, sent to a site with the fast
path and to one without it, get the same bytes back, the same access log
lines and the same counts: the fast path answers as twisted.web's path
does, or declines and leaves the request to it.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from apicache.auth.jwks import JWKSSource
from apicache.auth.tokens import TokenVerifier
from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import Router
from apicache.config import parse_config
from apicache.http.api import CacheAPI
from apicache.http.channel import ApiSite, ConnectionLimits
from apicache.http.fast import MAX_HEAD_BYTES, parse_head
from apicache.ops.logs import AccessLog
from apicache.store.memory import MemoryStore
from apicache.testing import TOKEN_AUDIENCE, TOKEN_ISSUER, TOKEN_NOW, FakeUpstream, TokenSigner, write_jwks
from apicache.upstream.client import UpstreamResponse

LM = b"Sun, 06 Nov 1994 08:49:37 GMT"
SIGNER = TokenSigner("RS256", "fast-rsa")
ROUTES = [
    {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 60, "negative_ttl": 30},
    {"type": "short", "path": "/server/short/<id>", "upstream": "/short/{id}", "ttl": 2},
]
OBJ = b"/server/object(42)/header"


def bearer(**claims: str) -> bytes:
    """An unverified JWT of ``claims`` (tenant_claim without [auth] reads it unverified)."""
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return b"Bearer e30." + payload + b".sig"


def upstream_answer(path, headers):
    if "missing" in path:
        return UpstreamResponse(404, [(b"content-type", b"application/json")], b'{"error": "nope"}')
    if "vary" in path:
        # an answer that varies by a request header (variants, RFC 9111 section 4.1)
        given = dict(headers).get(b"accept-language", b"-")
        return UpstreamResponse(
            200, [(b"content-type", b"application/json"), (b"vary", b"Accept-Language")], b'{"lang": "%s"}' % given
        )
    return UpstreamResponse(
        200,
        [
            (b"content-type", b"application/json"),
            (b"etag", b'"e1"'),
            (b"last-modified", LM),
            (b"x-total-count", b"104"),
        ],
        b'{"path": "%s"}' % path.encode(),
    )


def request(method=b"GET", target=OBJ, headers=((b"api-key", b"k1"), (b"org_id", b"t1")), version=b"HTTP/1.1"):
    head = b"%s %s %s\r\nHost: x\r\n" % (method, target, version)
    return head + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n"


#: what is stored before each exchange: (target, extra headers, tenant)
WARM = [
    (OBJ, (), b"t1"),
    (OBJ + b"?a=1", (), b"t1"),
    (OBJ, (), b"t2"),
    (b"/server/object(7)/header", ((b"accept-language", b"de"),), b"t1"),
    (b"/server/short/1", (), b"t1"),
    (b"/server/object(missing)/header", (), b"t1"),
    (b"/server/object(vary)/header", ((b"accept-language", b"de"),), b"t1"),
    (b"/server/object(vary)/header", ((b"accept-language", b"fr"),), b"t1"),
]


class World:
    """
    A site as the daemon builds it, with its entries stored, its access log
    in a file and its counts, with or without the fast path.
    """

    def __init__(self, fast: bool, server: dict | None = None, auth: bool = False, upstream: dict | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(TOKEN_NOW)
        data = {
            "server": {"api_keys": ["k1"], **(server or {})},
            "upstream": {"base_url": "http://up/api", **(upstream or {})},
            "routes": ROUTES,
        }
        verifier = None
        if auth:
            self._jwks = tempfile.NamedTemporaryFile(suffix=".json")
            write_jwks(Path(self._jwks.name), SIGNER.jwk())
            data["auth"] = {"jwks": self._jwks.name, "issuers": [TOKEN_ISSUER], "audiences": [TOKEN_AUDIENCE]}
            self.source = JWKSSource(self._jwks.name, self.clock)
            self.source.startService()
        config = parse_config(data, "test.toml", {})
        if auth:
            verifier = TokenVerifier(self.source, self.clock, issuers=config.auth.issuers, audiences=config.auth.audiences)
        self.verifier = verifier
        self.upstream = FakeUpstream(auto=upstream_answer)
        self.registry = CacheRegistry(
            MemoryStore(1 << 20), self.upstream, self.clock, config.routes, config.upstream.keyed_headers
        )
        self.api = CacheAPI(config, self.registry, Router(config.routes), self.clock, node="n1", verifier=verifier)
        self._log_file = tempfile.TemporaryFile()
        self.log = AccessLog(self.clock, fd=self._log_file.fileno())
        self.log.startService()
        self.site = ApiSite(
            self.api.resource(),
            self.clock,
            self.api.metrics,
            access_log=self.log,
            keys=self.api.keys,
            limits=ConnectionLimits(header_timeout=10.0, idle_timeout=30.0),
            tenant_header=b"org_id",
            verifier=verifier,
            fast_path=fast,
        )
        assert (self.site.fast_path is not None) == fast
        for target, headers, tenant in WARM:
            if auth:
                headers = (*headers, (b"authorization", b"Bearer " + SIGNER.token(zid=tenant.decode())))
            elif "tenant_claim" in (server or {}):
                headers = (*headers, (b"authorization", bearer(zid=tenant.decode())))
            out, _ = self.exchange([request(target=target, headers=((b"api-key", b"k1"), (b"org_id", tenant), *headers))])
            assert b"X-Cache: MISS" in out, out
        self.clock.advance(5)

    def connect(self) -> tuple:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, chunks: list[bytes], pauses: list[float] | None = None) -> tuple[bytes, bool]:
        """
        Send ``chunks`` on a new connection (advancing the clock by
        ``pauses[i]`` after chunk ``i``); return what came back and whether
        the connection is being closed.
        """
        protocol, transport = self.connect()
        for i, chunk in enumerate(chunks):
            protocol.dataReceived(chunk)
            if pauses and not transport.disconnecting:
                self.clock.advance(pauses[i])
            if transport.disconnecting:
                # as a TCP transport does once the channel closes it: nothing
                # more is read, and the connection is lost
                break
        closed = bool(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        return transport.value(), closed

    def log_lines(self) -> list[dict]:
        """
        Return the access lines written so far, without the fields that
        differ from run to run (time, duration, a new trace id).
        """
        self.log.flush()
        self._log_file.seek(0)
        lines = []
        for line in self._log_file.read().decode().splitlines():
            fields = json.loads(line)
            for name in ("time", "duration_ms", "trace_id"):
                fields.pop(name, None)
            lines.append(fields)
        return lines

    def counts(self) -> tuple:
        m = self.api.metrics
        tokens = None
        if self.verifier is not None:
            tokens = (dict(self.verifier.failures), self.verifier.signature_checks, self.verifier.cache_hits)
        return (
            dict(m.requests), {k: list(v) for k, v in m.tenants.items()}, self.site.active, len(self.upstream.fetched), tokens
        )


def both(
    chunks: list[bytes], pauses: list[float] | None = None, server: dict | None = None, auth: bool = False
) -> tuple[World, World]:
    """
    Send the same bytes to a site with the fast path and to one without;
    check that everything observable is the same; return both worlds.
    """
    fast, slow = World(True, server, auth), World(False, server, auth)
    assert fast.exchange(chunks, pauses) == slow.exchange(chunks, pauses)
    assert fast.log_lines() == slow.log_lines()
    assert fast.counts() == slow.counts()
    return fast, slow


def answered_fast(world: World) -> int:
    assert world.site.fast_path is not None
    return world.site.fast_path.answered


# -- the fast path answers hits, as twisted.web's path does -----------------------

K1 = (b"api-key", b"k1")
T1 = (b"org_id", b"t1")

HITS = {
    "get": request(),
    "head": request(method=b"HEAD"),
    "query": request(target=OBJ + b"?a=1"),
    "other tenant": request(headers=(K1, (b"org_id", b"t2"))),
    "keyed header": request(target=b"/server/object(7)/header", headers=(K1, T1, (b"accept-language", b"de"))),
    "if-none-match": request(headers=(K1, T1, (b"if-none-match", b'"e1"'))),
    "if-none-match, other": request(headers=(K1, T1, (b"if-none-match", b'"zz"'))),
    "if-modified-since": request(headers=(K1, T1, (b"if-modified-since", LM))),
    "head if-none-match": request(method=b"HEAD", headers=(K1, T1, (b"if-none-match", b'W/"e1"'))),
    "keep-alive": request(headers=(K1, T1, (b"Connection", b"keep-alive"))),
    "names in any case, odd spaces": b"GET %s HTTP/1.1\r\nAPI-KEY:k1\r\nOrg_Id: \t t1 \t\r\n\r\n" % OBJ,
    "traceparent": request(headers=(K1, T1, (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))),
    "negative": request(target=b"/server/object(missing)/header"),
    "range": request(headers=(K1, T1, (b"range", b"bytes=0-3"))),
    "range past the end": request(headers=(K1, T1, (b"range", b"bytes=500-"))),
    "range, if-range": request(headers=(K1, T1, (b"range", b"bytes=2-"), (b"if-range", b'"e1"'))),
    "only-if-cached": request(headers=(K1, T1, (b"cache-control", b"only-if-cached"))),
    "a variant": request(target=b"/server/object(vary)/header", headers=(K1, T1, (b"accept-language", b"fr"))),
}


@pytest.mark.parametrize("data", list(HITS.values()), ids=list(HITS))
def test_a_hit_is_answered_on_the_fast_path_as_on_twisted_webs(data):
    fast, _ = both([data])
    assert answered_fast(fast) == 1


def test_pipelined_hits_are_answered_in_order_on_the_fast_path():
    data = HITS["get"] + HITS["head"] + HITS["query"] + HITS["if-none-match"]
    fast, _ = both([data])
    assert answered_fast(fast) == 4


def test_a_head_split_across_reads_is_answered_once_whole():
    data = HITS["get"]
    for cut in (3, 20, len(data) - 2, len(data) - 1):
        fast, _ = both([data[:cut], data[cut:]])
        # a request line still incomplete stays unparsed: the fast path
        # answers once the head is whole; a head whose lines twisted.web
        # began to parse is its to finish
        assert answered_fast(fast) == (1 if cut < data.index(b"\r\n") else 0)


def test_a_miss_behind_hits_is_left_to_twisted_web_and_hits_behind_it_wait():
    miss = request(target=b"/server/object(99)/header")
    fast, _ = both([HITS["get"] + miss + HITS["get"] + HITS["head"]])
    # the miss was answered at once (the fake upstream answers at once);
    # what followed it in the same read was twisted.web's to parse
    assert answered_fast(fast) == 1


def test_a_miss_in_flight_holds_back_the_hits_pipelined_behind_it():
    """
    Pipelining order: a hit never overtakes an answer still being fetched.
    """
    w = World(True)
    w.upstream.auto = None
    protocol, transport = w.connect()
    protocol.dataReceived(request(target=b"/server/object(99)/header") + HITS["get"] + HITS["head"])
    assert transport.value() == b""
    assert answered_fast(w) == 0
    w.upstream.pending[0].respond(200, b'{"late": 1}', [(b"content-type", b"application/json")])
    out = transport.value()
    assert out.index(b'{"late": 1}') < out.index(b"X-Cache: HIT")
    assert out.count(b"HTTP/1.1 200 OK") == 3
    # once the miss was answered, the hits behind it came back to the fast path
    assert answered_fast(w) == 2


DECLINED = {
    "stale entry": request(target=b"/server/short/1"),
    "miss": request(target=b"/server/object(1)/header"),
    "no key": request(headers=(T1,)),
    "wrong key": request(headers=((b"api-key", b"k2"), T1)),
    "duplicate tenant": request(headers=(K1, T1, T1)),
    "duplicate key": request(headers=(K1, K1, T1)),
    "missing tenant": request(headers=(K1,)),
    "invalid tenant": request(headers=(K1, (b"org_id", b"t 1"))),
    "reserved path": request(target=b"/healthz"),
    "no route": request(target=b"/nowhere"),
    "HTTP/1.0": request(version=b"HTTP/1.0"),
    "connection close": request(headers=(K1, T1, (b"Connection", b"close"))),
    "connection close among others": request(headers=(K1, T1, (b"Connection", b"foo close"))),
    "content-length": request(headers=(K1, T1, (b"Content-Length", b"0"))),
    "a body": request(headers=(K1, T1, (b"Content-Length", b"5"))) + b"hello",
    "chunked": request(headers=(K1, T1, (b"Transfer-Encoding", b"chunked"))) + b"0\r\n\r\n",
    "expect": request(headers=(K1, T1, (b"Expect", b"100-continue"))),
    "obs-fold": b"GET %s HTTP/1.1\r\napi-key: k1\r\norg_id:\r\n t1\r\n\r\n" % OBJ,
    "space before colon": b"GET %s HTTP/1.1\r\napi-key: k1\r\norg_id : t1\r\n\r\n" % OBJ,
    "bare LF": b"GET %s HTTP/1.1\napi-key: k1\norg_id: t1\n\n" % OBJ,
    "LF ends the head": b"GET %s HTTP/1.1\r\napi-key: k1\r\norg_id: t1\r\n\n" % OBJ,
    "CR and LF apart": b"GET %s HTTP/1.1\r\napi-key: k1\r\norg_id: t1\r\nx-a: 1\rb\nc\r\n\r\n" % OBJ,
    "obs-text": request(headers=(K1, T1, (b"x-a", b"caf\xe9"))),
    "NUL": request(headers=(K1, T1, (b"x-a", b"a\x00b"))),
    "two spaces": b"GET  %s HTTP/1.1\r\napi-key: k1\r\norg_id: t1\r\n\r\n" % OBJ,
    "absolute form": request(target=b"http://x" + OBJ),
    "lower-case method": request(method=b"get"),
    "POST": request(method=b"POST"),
    "leading blank line": b"\r\n" + request(),
    "CL.TE": request(headers=(K1, T1, (b"Content-Length", b"4"), (b"Transfer-Encoding", b"chunked"))) + b"0\r\n\r\n",
    "TE obs-fold": b"GET %s HTTP/1.1\r\napi-key: k1\r\norg_id: t1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" % OBJ,
    "smuggled GET in a body": request(headers=(K1, T1, (b"Content-Length", b"%d" % len(request())))) + request(),
}


@pytest.mark.parametrize("data", list(DECLINED.values()), ids=list(DECLINED))
def test_what_the_fast_path_is_not_sure_of_is_left_to_twisted_web(data):
    fast, _ = both([data])
    assert answered_fast(fast) == 0


def test_parse_head_declines_what_twisted_web_would_read_otherwise():
    assert parse_head(HITS["get"]) is not None
    for name, data in DECLINED.items():
        if name in ("stale entry", "miss", "no key", "wrong key", "duplicate tenant", "duplicate key",
                    "missing tenant", "invalid tenant", "reserved path", "no route", "leading blank line"):
            continue
        assert parse_head(data) is None, name
    assert parse_head(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n") is None
    assert parse_head(b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 101 + b"\r\n") is None


def test_the_header_table_is_twisted_webs():
    head = parse_head(b"GET /p?q HTTP/1.1\r\nHost: x\r\nx-a:  1 \r\nX-A: 2\r\netag: 3\r\nTE: 4\r\n\r\nrest")
    assert head is not None
    assert (head.method, head.target, head.end) == (b"GET", b"/p?q", len(b"GET /p?q HTTP/1.1\r\nHost: x\r\nx-a:  1 \r\nX-A: 2\r\netag: 3\r\nTE: 4\r\n\r\n"))
    assert head.headers == {b"Host": [b"x"], b"X-A": [b"1", b"2"], b"ETag": [b"3"], b"TE": [b"4"]}


def test_access_log_fields_of_a_fast_hit():
    fast, _ = both([HITS["get"]])
    line = fast.log_lines()[-1]
    assert (line["method"], line["path"], line["status"], line["x_cache"], line["tenant"], line["route"]) == (
        "GET", OBJ.decode(), 200, "HIT", "t1", "object"
    )
    assert line["client"] == StringTransport().getPeer().host and line["bytes"] > 0


@pytest.mark.parametrize("step", ["resolve_hit", "hit"])
def test_a_fast_path_failure_before_answering_leaves_the_request_to_twisted_web(step, monkeypatch):
    """
    An exception in the fast path before anything is written is logged and
    the request goes to twisted.web's path, whole: one answer, no byte lost.
    """
    w = World(True)
    front = w.site.fast_path.front
    real = getattr(front, step)
    calls = []

    def failing_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*args)

    monkeypatch.setattr(front, step, failing_once)
    out, closed = w.exchange([HITS["get"]])
    assert out.count(b"HTTP/1.1 200 OK") == 1 and b"X-Cache: HIT" in out and not closed
    assert answered_fast(w) == 0
    assert w.site.active == 0
    # the next one is the fast path's again
    out, _ = w.exchange([HITS["get"]])
    assert answered_fast(w) == 1


def test_each_fast_hit_without_a_traceparent_logs_a_new_trace_id():
    w = World(True)
    w.exchange([HITS["get"] * 3 + request(headers=(K1, T1, (b"traceparent", b"00-%032x-%016x-01" % (7, 7))))])
    assert answered_fast(w) == 4
    w.log.flush()
    w._log_file.seek(0)
    ids = [json.loads(line)["trace_id"] for line in w._log_file.read().decode().splitlines()][-4:]
    assert all(isinstance(i, str) and len(i) == 32 and int(i, 16) for i in ids), ids
    assert len(set(ids[:3])) == 3
    assert ids[3] == f"{7:032x}"


def test_tenant_claim_is_checked_on_the_fast_path():
    server = {"tenant_claim": "zid"}
    good = request(headers=(K1, T1, (b"authorization", bearer(zid="t1"))))
    bad = request(headers=(K1, T1, (b"authorization", bearer(zid="t2"))))
    fast, _ = both([good + bad + good], server=server)
    # the second is refused by the route (Klein's error handler), and the
    # third waits for it, answered by twisted.web's path too
    assert answered_fast(fast) == 1
    out, _ = fast.exchange([bad])
    assert out.startswith(b"HTTP/1.1 403")


# -- bounds ------------------------------------------------------------------


class SlowReader(StringTransport):
    """A transport that, like a TCP one, pauses its producer over bufferSize."""

    bufferSize = 4096

    def __init__(self):
        super().__init__()
        self.paused_at: list[int] = []

    def write(self, data):
        super().write(data)
        if len(self.value()) > self.bufferSize and self.producer is not None and not self.paused_at:
            self.paused_at.append(len(self.value()))
            self.producer.pauseProducing()

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def drain(self):
        self.clear()
        self.paused_at = []
        if self.producer is not None:
            self.producer.resumeProducing()


def test_pipelined_hits_stop_once_the_write_buffer_is_full_and_resume_as_the_client_reads():
    w = World(True)
    protocol = w.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = SlowReader()
    protocol.makeConnection(transport)
    # a small write buffer (the channel may have set it from
    # server.max_write_buffer as the connection was made)
    transport.bufferSize = 4096
    one = len(World(False).exchange([HITS["get"]])[0])
    n = 100
    protocol.dataReceived(HITS["get"] * n)
    held = len(transport.value())
    # no more than the buffer, plus one answer and one batch, is written
    assert held <= transport.bufferSize + one + 16384
    answers = held // one
    assert answers < n
    total = answers
    while total < n:
        transport.drain()
        got = len(transport.value()) // one
        assert got > 0
        total += got
    assert total == n
    assert transport.value().endswith(b'"}')


def test_a_connection_idle_past_idle_timeout_is_closed_after_fast_hits():
    w = World(True)
    protocol, transport = w.connect()
    protocol.dataReceived(HITS["get"])
    w.clock.advance(29)
    protocol.dataReceived(HITS["get"])
    w.clock.advance(29)
    assert not transport.disconnecting
    w.clock.advance(2)
    assert transport.disconnecting
    assert answered_fast(w) == 2


# -- the differential property ---------------------------------------------------

_TARGETS = [
    OBJ,
    OBJ + b"?a=1",
    OBJ + b"?b=2",
    b"/server/object(7)/header",
    b"/server/short/1",
    b"/server/object(missing)/header",
    b"/server/object(vary)/header",
    b"/server/object(..%2Fx)/header",
    b"/server/object(%ff)/header",
    b"/healthz",
    b"/",
    b"/nowhere",
    b"*",
    b"http://x" + OBJ,
    b"/server/object(4\xff2)/header",
    b"/server/object(4\t2)/header",
]
_METHODS = [b"GET", b"GET", b"GET", b"HEAD", b"POST", b"DELETE", b"get", b"OPTIONS"]
_VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"http/1.1"]
_NAMES = [b"api-key", b"API-Key", b"org_id", b"Org_ID", b"accept-language", b"if-none-match", b"if-modified-since",
          b"connection", b"content-length", b"transfer-encoding", b"expect", b"traceparent", b"tracestate",
          b"range", b"cache-control", b"x-a", b"host", b"authorization", b"accept-encoding"]
_VALUES = [b"k1", b"k2", b"t1", b"t2", b"", b" t1 ", b"t 1", b"de", b'"e1"', b'W/"e1"', b"*", LM, b"close",
           b"keep-alive", b"Keep-Alive, close", b"0", b"5", b"chunked", b"100-continue", b"only-if-cached",
           b"bytes=0-3", b"gzip", b"a\x00b", b"caf\xe9", b"\t1\t",
           b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
_SEPARATORS = [b": ", b": ", b":", b" : ", b":\t", b":  "]
_ENDINGS = [b"\r\n"] * 12 + [b"\n", b"\r"]


@st.composite
def header_line(draw):
    name = draw(st.sampled_from(_NAMES))
    value = draw(st.sampled_from(_VALUES))
    line = name + draw(st.sampled_from(_SEPARATORS)) + value
    if draw(st.integers(0, 19)) == 0:
        line = b" " + line  # an obs-fold continuation
    if draw(st.integers(0, 29)) == 0:
        line = name  # no colon
    return line


#: lines slipped into an otherwise well-formed request: what twisted.web acts
#: on itself, reads otherwise, or refuses
_SPECIAL = [
    b"Connection: close", b"connection: Keep-Alive", b"Connection: keep-alive close", b"Connection: upgrade",
    b"Content-Length: 0", b"content-length: 5", b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity",
    b"Expect: 100-continue", b"x-a: 1\nx-b: 2", b"x-a: 1\rx", b"x-a: 1\rb\nc", b"x-a: \n\r", b"x-a: a\x00b", b"x-a: caf\xe9", b" folded",
    b"\tfolded", b"x-a : 1", b"x-a:1 \t", b"org_id: t1", b"ORG_ID: t2", b"API-KEY: k1", b"api-key: k2", b"no colon",
    b": empty name", b"x-\x7f: 1", b"x-a: \x7f", b"range: bytes=0-3", b"range: bytes=500-", b"range: bytes=0-1,3-4", b'if-range: "e1"',
    b"cache-control: only-if-cached",
    b"if-none-match: *", b'if-none-match: "zz", W/"e1"', b"if-modified-since: yesterday", b"traceparent: junk",
    b"tracestate: a=1",
]


#: a new trace context each request (the fast path remembers heads without it)
_TRACE_CONTEXT = [
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    b"traceparent:00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00 ",
    b"tracestate: a=1",
    b"tracestate: b=2, c=3",
    b"x-request-id: 4bf92f35-77b3",
    b"X-Request-Id:0af76519 ",
    b"x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7",
    b"X-Correlationid: c-1",
]


@st.composite
def near_hit(draw):
    """A hit with one line, version or line end that twisted.web reads its own way."""
    lines = [draw(st.sampled_from([b"GET", b"HEAD"])) + b" " + OBJ + b" HTTP/1.1", b"Host: x", b"api-key: k1", b"org_id: t1"]
    kind = draw(st.sampled_from(["line", "line", "line", "version", "end"]))
    if kind == "line":
        lines.insert(draw(st.integers(1, len(lines))), draw(st.sampled_from(_SPECIAL)))
    elif kind == "version":
        lines[0] = lines[0][:-8] + draw(st.sampled_from([b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 "]))
    ends = [b"\r\n"] * len(lines)
    if kind == "end":
        ends[draw(st.integers(0, len(lines) - 1))] = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b" \r\n"]))
    return b"".join(line + end for line, end in zip(lines, ends, strict=True)) + b"\r\n"


@st.composite
def one_request(draw):
    which = draw(st.integers(0, 2))
    if which == 1:
        return draw(near_hit())
    if which == 0:
        # a well-formed hit-like request (the common case, often a hit), now
        # and then with a line, version or line end twisted.web reads its own way
        headers = [b"api-key: k1", b"org_id: " + draw(st.sampled_from([b"t1", b"t1", b"t2"]))]
        headers += draw(st.lists(st.sampled_from([b"accept-language: de", b"accept-language: fr", b'if-none-match: "e1"',
                                                  b"if-modified-since: " + LM, b"x-a: 1", *_TRACE_CONTEXT]), max_size=2))
        for line in draw(st.lists(st.sampled_from(_SPECIAL), max_size=draw(st.sampled_from([0, 0, 1, 2])))):
            headers.insert(draw(st.integers(0, len(headers))), line)
        if draw(st.integers(0, 5)) == 5:
            headers.insert(draw(st.integers(0, len(headers))), draw(header_line()))
        method = draw(st.sampled_from([b"GET", b"GET", b"HEAD"]))
        target = draw(st.sampled_from([OBJ, OBJ, *_TARGETS[:7]]))
        version = draw(st.sampled_from([b"HTTP/1.1"] * 5 + [b"HTTP/1.0"]))
        lines = [method + b" " + target + b" " + version, b"Host: x", *headers]
        ends = [draw(st.sampled_from([b"\r\n"] * 15 + [b"\n"])) for _ in lines]
        return b"".join(line + end for line, end in zip(lines, ends, strict=True)) + b"\r\n"
    method = draw(st.sampled_from(_METHODS))
    target = draw(st.sampled_from(_TARGETS))
    version = draw(st.sampled_from(_VERSIONS))
    space = draw(st.sampled_from([b" "] * 8 + [b"  ", b"\t"]))
    ending = draw(st.sampled_from(_ENDINGS))
    lines = [method + space + target + b" " + version]
    lines += draw(st.lists(header_line(), max_size=6))
    data = ending.join(lines) + ending + ending
    if b"content-length: 5" in data.lower() or b"chunked" in data.lower():
        data += draw(st.sampled_from([b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n", b""]))
    return data


@st.composite
def exchanges(draw):
    data = b"".join(draw(st.lists(one_request(), min_size=1, max_size=4)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=draw(st.sampled_from([0, 0, 1, 3])), unique=True)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]
    pauses = draw(st.lists(st.sampled_from([0.0, 0.0, 3.0, 11.0]), min_size=len(chunks), max_size=len(chunks)))
    return chunks, pauses


@settings(max_examples=int(os.environ.get("FAST_PATH_EXAMPLES", "200")))
@given(exchanges())
def test_the_fast_path_answers_as_twisted_web_or_declines(exchange):
    chunks, pauses = exchange
    fast, _ = both(chunks, pauses)
    event(f"answered on the fast path: {min(answered_fast(fast), 3)}")


@pytest.mark.parametrize("line", _SPECIAL, ids=[repr(x)[2:-1] for x in _SPECIAL])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_a_hit_with_one_odd_line_is_answered_alike(method, line):
    for at in (2, 4):
        lines = [method + b" " + OBJ + b" HTTP/1.1", b"Host: x", b"api-key: k1", b"org_id: t1"]
        lines.insert(at, line)
        both([b"\r\n".join(lines) + b"\r\n\r\n" + HITS["get"]])


@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1.1\t"])
def test_a_hit_of_another_version_is_answered_alike(version):
    both([HITS["get"].replace(b"HTTP/1.1", version, 1) + HITS["get"]])


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\r\n", b" \r\n", b"\t\r\n"])
@pytest.mark.parametrize("at", [0, 1, 2, 3])
def test_a_hit_with_an_odd_line_end_is_answered_alike(end, at):
    lines = HITS["get"].split(b"\r\n")
    data = b"".join(line + (end if i == at else b"\r\n") for i, line in enumerate(lines[:4])) + b"\r\n"
    both([data + HITS["get"]])


# -- [auth] -------------------------------------------------------------------


def signed(**claims: str) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + SIGNER.token(**claims))


def test_with_auth_a_hit_whose_token_was_verified_is_answered_on_the_fast_path():
    token = signed(zid="t1")
    data = request(headers=(K1, T1, token))
    fast, _ = both([data + data + data], auth=True)
    # the warming request verified it: every hit is a remembered token's
    assert answered_fast(fast) == 3
    # one signature check per token (t1's, t2's), when warming: the hits
    # counted their cache hits as twisted.web's path does (both() compares)
    assert fast.verifier.signature_checks == 2


AUTH_CASES = {
    "a new token": [request(headers=(K1, T1, signed(zid="t1", sub="bob")))],
    "no token": [request(headers=(K1, T1))],
    "another scheme": [request(headers=(K1, T1, (b"authorization", b"Basic eDp5")))],
    "a bearer without a token": [request(headers=(K1, T1, (b"authorization", b"Bearer ")))],
    "two authorization headers": [request(headers=(K1, T1, signed(zid="t1"), signed(zid="t1")))],
    "a forged signature": [request(headers=(K1, T1, (b"authorization", b"Bearer " + SIGNER.token(zid="t1")[:-4] + b"AAAA")))],
    "an unknown kid": [request(headers=(K1, T1, (b"authorization", b"Bearer " + TokenSigner("RS256", "nope").token(zid="t1"))))],
    "the warm token, then a new one": [request(headers=(K1, T1, signed(zid="t1"))) + request(headers=(K1, T1, signed(zid="t1", sub="x")))],
    "no tenant: no token needed": [request(target=b"/healthz", headers=(K1,))],
}


@pytest.mark.parametrize("chunks", list(AUTH_CASES.values()), ids=list(AUTH_CASES))
def test_with_auth_what_the_fast_path_cannot_vouch_for_is_left_to_twisted_web(chunks):
    both(chunks, auth=True)


def test_with_auth_an_expired_remembered_token_is_left_to_twisted_web():
    data = request(headers=(K1, T1, signed(zid="t1")))
    fast, slow = World(True, auth=True), World(False, auth=True)
    for world in (fast, slow):
        # the warming requests verified the token; it is valid ten minutes
        world.clock.advance(3600)
    out = fast.exchange([data])
    assert out == slow.exchange([data])
    assert out[0].startswith(b"HTTP/1.1 401")
    assert fast.counts() == slow.counts()
    assert answered_fast(fast) == 0


def test_with_auth_a_remembered_head_whose_token_expired_is_left_to_twisted_web():
    """
    A head answered as a hit is remembered by its bytes (a Plan): the same
    bytes again are answered without parsing them, but the token's verdict
    is asked for every time.
    """
    data = request(headers=(K1, T1, signed(zid="t1")))
    fast, slow = World(True, auth=True), World(False, auth=True)
    outs = []
    for world in (fast, slow):
        first = world.exchange([data + data])
        world.clock.advance(3600)  # the token is valid ten minutes
        outs.append((first, world.exchange([data])))
    assert outs[0] == outs[1]
    assert outs[0][1][0].startswith(b"HTTP/1.1 401")
    assert fast.counts() == slow.counts()
    assert fast.log_lines() == slow.log_lines()
    assert answered_fast(fast) == 2
    assert len(fast.site.fast_path._plans) == 1


def test_a_remembered_head_is_answered_only_while_its_entry_is_fresh():
    """
    A Plan holds the resolution, never the answer: once the entry is stale
    the same bytes go to twisted.web (a miss), and the next are a hit again.
    """
    data = request(target=b"/server/object(5)/header")
    fast, slow = World(True), World(False)
    outs = []
    for world in (fast, slow):
        first = world.exchange([data, data, data])  # a miss, then two hits
        world.clock.advance(61)  # ttl 60
        outs.append((first, world.exchange([data, data])))
    assert outs[0] == outs[1]
    assert outs[0][0][0].count(b"X-Cache: MISS") == 1 and outs[0][0][0].count(b"X-Cache: HIT") == 2
    assert outs[0][1][0].count(b"X-Cache: MISS") == 1 and outs[0][1][0].count(b"X-Cache: HIT") == 1
    assert fast.counts() == slow.counts()
    assert fast.log_lines() == slow.log_lines()
    assert answered_fast(fast) == 3


def _traced(n: int, state: bool = False, name: bytes = b"traceparent") -> bytes:
    lines = [(name, b"00-%032x-%016x-01" % (n + 1, n + 1))]
    if state:
        lines.append((b"tracestate", b"v=%d" % n))
    return request(headers=(K1, *lines, T1, (b"x-a", b"1")))


#: the trace ids the traced requests below carry
_CALLER_IDS = {f"{n:032x}" for n in range(1, 12)}

TRACED = {
    "a new traceparent each time": [_traced(1), _traced(2), _traced(3)],
    "and a tracestate": [_traced(1, True), _traced(2, True), _traced(3)],
    "none, then one": [request(headers=(K1, T1, (b"x-a", b"1"))), _traced(4)],
    "another spelling": [_traced(1, name=b"Traceparent"), _traced(2, name=b"Traceparent")],
    "two traceparent lines": [_traced(1), _traced(2).replace(b"x-a: 1", b"traceparent: 00-ab-cd-01")],
    "a control byte in it": [_traced(1), _traced(2).replace(b"-01\r\n", b"-\x0101\r\n", 1)],
    "an obs-fold after it": [_traced(1), _traced(2).replace(b"-01\r\n", b"-01\r\n  more\r\n", 1)],
    "a bare LF in it": [_traced(1), _traced(2).replace(b"-01\r\n", b"-0\n1\r\n", 1)],
    "it ends the head": [_traced(1), request(headers=(K1, T1, (b"x-a", b"1"), (b"traceparent", b"00-%032x-%016x-01" % (9, 9))))],
    "HEAD, then GET": [_traced(1).replace(b"GET", b"HEAD", 1), _traced(2)],
    "a new x-request-id each time": [_traced(1, name=b"x-request-id"), _traced(2, name=b"x-request-id")],
    "X-Request-Id and a traceparent": [_traced(1).replace(b"x-a: 1", b"X-Request-Id: r1"),
                                       _traced(2).replace(b"x-a: 1", b"X-Request-Id: r2")],
    "two x-request-id lines": [_traced(1, name=b"x-request-id"),
                               _traced(2, name=b"x-request-id").replace(b"x-a: 1", b"X-Request-ID: r")],
    "a control byte in an x-request-id": [_traced(1, name=b"x-request-id"),
                                          _traced(2, name=b"x-request-id").replace(b"-01\r\n", b"-\x0101\r\n", 1)],
}


@pytest.mark.parametrize("chunks", list(TRACED.values()), ids=list(TRACED))
def test_a_traced_client_finds_its_plan_and_is_answered_as_twisted_web_does(chunks):
    """
    A head is remembered without its per-request lines (the W3C trace
    context, request ids), so that a client sending a new traceparent or
    X-Request-Id each time finds its plan; the trace ids logged are each
    request's own, and whatever is not one clean line of each is parsed as
    it comes.
    """
    fast, slow = World(True), World(False)
    warmed = len(fast.log_lines())
    for world in (fast, slow):
        for chunk in chunks:
            world.exchange([chunk])
    outs = [w.exchange([b"".join(chunks)]) for w in (fast, slow)]
    assert outs[0] == outs[1]
    assert fast.counts() == slow.counts()
    assert fast.log_lines() == slow.log_lines()
    ids = []
    for world in (fast, slow):
        world._log_file.seek(0)
        lines = world._log_file.read().decode().splitlines()[warmed:]
        # a caller's trace id is logged as it came; a new one is random
        ids.append([i if i in _CALLER_IDS else "new" for i in (json.loads(line)["trace_id"] for line in lines)])
    assert ids[0] == ids[1]


def test_a_new_traceparent_each_time_is_answered_from_one_plan():
    w = World(True)
    protocol, transport = w.connect()
    for n in range(5):
        protocol.dataReceived(_traced(n, state=n % 2 == 0))
    assert transport.value().count(b"X-Cache: HIT") == 5
    assert answered_fast(w) == 5
    assert list(w.site.fast_path._plans) == [request(headers=(K1, T1, (b"x-a", b"1")))]
    w.log.flush()
    w._log_file.seek(0)
    ids = [json.loads(line)["trace_id"] for line in w._log_file.read().decode().splitlines()][-5:]
    assert ids == [f"{n + 1:032x}" for n in range(5)]


def test_a_new_request_id_each_time_is_answered_from_one_plan():
    w = World(True)
    protocol, transport = w.connect()
    for n in range(5):
        name = (b"x-request-id", b"X-Request-Id", b"x-correlationid", b"x-b3-traceid", b"b3")[n]
        protocol.dataReceived(request(headers=(K1, (name, b"id-%d" % n), T1, (b"x-a", b"1"))))
    assert transport.value().count(b"X-Cache: HIT") == 5
    assert answered_fast(w) == 5
    assert list(w.site.fast_path._plans) == [request(headers=(K1, T1, (b"x-a", b"1")))]


def test_per_request_lines_are_taken_out_of_the_bytes_once_each():
    from apicache.http.fast import PerRequestLines

    lines = PerRequestLines()
    head = b"GET / HTTP/1.1\r\nX-Request-Id:  r1 \r\nHost: x\r\ntraceparent: 00-ab\r\n\r\n"
    assert lines.split(head) == (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                 [(b"X-Request-Id", b"r1"), (b"Traceparent", b"00-ab")])
    assert lines.split(b"GET / HTTP/1.1\r\nB3: 1\r\n\r\n") == (b"GET / HTTP/1.1\r\n\r\n", [(b"B3", b"1")])
    # a name within another's, twice, a control byte, a bare LF: the bytes as they are
    assert lines.split(b"GET / HTTP/1.1\r\nx-request-ids: 1\r\nx-b3: 1\r\n\r\n") is None
    assert lines.split(b"GET / HTTP/1.1\r\nb3: 1\r\nB3: 2\r\n\r\n") is None
    assert lines.split(b"GET / HTTP/1.1\r\nb3: \x01\r\n\r\n") is None
    assert lines.split(b"GET / HTTP/1.1\r\nb3: 1\n2\r\n\r\n") is None
    assert PerRequestLines(unread=()).split(head) is None


def test_a_keyed_request_id_stays_in_the_bytes_remembered():
    # forwarded and keyed by the configuration: each value is its own key
    w = World(True, upstream={"forward_headers": ["authorization", "x-request-id"]})
    assert b"x-request-id" not in w.site.fast_path._per_request.names
    assert b"traceparent" in w.site.fast_path._per_request.names
    protocol, transport = w.connect()
    for n in (1, 1, 2):
        protocol.dataReceived(request(headers=(K1, (b"x-request-id", b"r%d" % n), T1)))
    assert transport.value().count(b"X-Cache: MISS") == 2
    assert transport.value().count(b"X-Cache: HIT") == 1


def test_a_tenant_header_named_like_a_request_id_stays_in_the_bytes_remembered():
    # the plan holds its tenant: the tenant header is never taken out
    from types import SimpleNamespace

    from apicache.http.fast import FastPath

    fast = FastPath(SimpleNamespace(tenant_header=b"X-Request-Id"), SimpleNamespace(keyed_headers=(b"b3",)))  # type: ignore[arg-type]
    assert b"x-request-id" not in fast._per_request.names and b"b3" not in fast._per_request.names
    assert b"traceparent" in fast._per_request.names


def test_remembered_heads_are_bounded():
    from apicache.http.fast import PLAN_HEAD_BYTES, PLANS_MAX

    w = World(True)
    protocol, transport = w.connect()
    for i in range(PLANS_MAX + 5):
        protocol.dataReceived(request(target=OBJ + b"?a=1", headers=(K1, T1, (b"x-n", b"%d" % i))))
    protocol.dataReceived(request(headers=(K1, T1, (b"x-long", b"a" * PLAN_HEAD_BYTES))))
    assert transport.value().count(b"X-Cache: HIT") == PLANS_MAX + 6
    assert 0 < len(w.site.fast_path._plans) <= PLANS_MAX
    assert all(len(raw) <= PLAN_HEAD_BYTES for raw in w.site.fast_path._plans)


_T1_TOKEN = b"authorization: Bearer " + SIGNER.token(zid="t1")


@settings(max_examples=int(os.environ.get("FAST_PATH_EXAMPLES", "200")) // 4)
@given(exchanges())
def test_with_auth_the_fast_path_answers_as_twisted_web_or_declines(exchange):
    chunks, pauses = exchange
    # most requests carry the token the warming requests verified
    chunks = [c.replace(b"api-key: k1\r\n", b"api-key: k1\r\n" + _T1_TOKEN + b"\r\n") for c in chunks]
    fast, _ = both(chunks, pauses, auth=True)
    event(f"answered on the fast path: {min(answered_fast(fast), 3)}")


def test_fast_answers_are_counted_in_the_metrics():
    w = World(True)
    w.api.metrics.add_source(w.site.metrics_families)  # as the daemon's wiring does
    w.exchange([HITS["get"] * 3])
    text = w.api.metrics.scrape()
    text = text if isinstance(text, bytes) else text.encode()
    assert b"apicache_fast_path_answers_total 3.0" in text


def test_a_fast_hit_as_the_first_read_stops_the_first_byte_deadline():
    w = World(True)
    protocol, transport = w.connect()
    protocol.dataReceived(HITS["get"])
    w.clock.advance(15)  # past header_timeout, within idle_timeout
    assert not transport.disconnecting
    assert answered_fast(w) == 1


def test_a_connection_that_sends_nothing_is_closed_alike():
    fast, slow = World(True), World(False)
    for w in (fast, slow):
        _, transport = w.connect()
        w.clock.advance(11)
        assert transport.disconnecting
