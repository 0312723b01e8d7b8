"""
Fuzz targets, written as Hypothesis properties so that one definition
serves the short smoke run of ``make test`` and the long run of
``make fuzz``:

- L{request_to_upstream}: a request (path, query, headers) resolved to a
  route, a cache key and an upstream path (the resolver the fast path and
  the Klein route share);
- L{wire_to_upstream}: the same through the whole server, from the bytes
  of a request on the wire to what the upstream is asked for;
- L{event_decoding}: a Kafka message value decoded into cache actions;
- L{upstream_answers}: an upstream's answer (random status line, header
  block, numbers, codings, framing and body) through the real upstream
  client (Twisted's HTTP/1.1 client, the tenant-safe pool, the bounded
  header block) into the cache and back out to the caller, twice (a miss,
  then whatever is stored).

The properties: no exception other than the SPEC's errors (a
L{DOMAIN_ERRORS} mapped to a SPEC code, L{BadEvent}), and no upstream path
outside its route's template (each parameter a single, non-dot segment
that decodes back to the parameter); for upstream answers: never a 500,
every answer written a well-formed head, and every value stored one that
the store's load-time validation (L{entry_problem}) accepts, before and
after the Redis codec.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, unquote

from hypothesis import assume
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter
from twisted.web.http_headers import Headers

from apicache.cache.keys import validate_tenant
from apicache.cache.links import LinkTargets
from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import Route, Router
from apicache.config import parse_config
from apicache.events.decoding import BadEvent, EventDecoder
from apicache.http.api import CacheAPI
from apicache.http.channel import ApiSite, ConnectionLimits
from apicache.http.errors import DOMAIN_ERRORS, api_error
from apicache.http.resolve import Resolver
from apicache.ops.instrument import TimedUpstream
from apicache.ops.metrics import Metrics
from apicache.store.interface import CachedResponse
from apicache.store.memory import MemoryStore
from apicache.store.redis.codec import decode_entry, encode_entry, entry_problem
from apicache.testing import InMemoryAPI
from apicache.upstream.client import UpstreamClient, UpstreamResponse
from apicache.upstream.intermediary import IntermediaryUpstream

ROUTES = [
    {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header"},
    {"type": "template", "path": "/server/templates/<id>", "upstream": "/templates/{id}"},
    {"type": "scoped", "path": "/server/<scope>/stats/<day>", "upstream": "/admin/{scope}/stats/{day}"},
    {"type": "file", "path": "/server/files/<name>.json", "upstream": "/files/{name}.json"},
]
EVENTS = [
    {"types": ["object.update", "object.delete"], "route": "object", "id_field": "objectid", "tenant_field": "org_id"},
    {"types": ["scoped.update"], "route": "scoped", "fields": {"scope": "s", "day": "d"}, "action": "refresh"},
]
CONFIG = parse_config(
    {
        "server": {"api_keys": ["k1"]},
        "upstream": {"base_url": "http://up/api", "forward_headers": ["accept", "accept-language", "authorization"]},
        "routes": ROUTES,
        "events": EVENTS,
        "kafka": {"bootstrap_servers": "127.0.0.1:9", "topics": ["t"]},
    },
    "fuzz.toml",
    {},
)
ROUTER = Router(CONFIG.routes)
RESOLVER = Resolver(CONFIG, ROUTER)
DECODER = EventDecoder(CONFIG.events, CONFIG.routes)
#: The codes SPEC.md section 4 lists, plus bad_request (a request twisted.web can't parse).
SPEC_CODES = frozenset(
    {
        "missing_tenant", "invalid_tenant", "invalid_parameter", "invalid_query", "duplicate_header",
        "unauthorized", "tenant_mismatch", "admin_required", "no_route", "method_not_allowed",
        "body_too_large", "upstream_unreachable", "overloaded", "store_unavailable", "upstream_timeout",
        "bad_request",
    }
)
#: How many inputs each target tried (read by the runner).
TRIED: dict[str, int] = {"request_to_upstream": 0, "wire_to_upstream": 0, "event_decoding": 0, "upstream_answers": 0}


# -- the upstream path property ---------------------------------------------------

_SENTINEL = "FUZZPARAM{}X"
_ENCODED_PARAM = r"(?:[A-Za-z0-9_.~-]|%[0-9A-F]{2})+"


def _template_pattern(route: Route) -> re.Pattern[str]:
    sentinels = tuple(_SENTINEL.format(i) for i in range(len(route.params)))
    shape = re.escape(route.upstream_path(sentinels, ""))
    for i, name in enumerate(route.params):
        shape = shape.replace(re.escape(sentinels[i]), f"(?P<{name}>{_ENCODED_PARAM})", 1)
    # then the canonical query: every name and value percent-encoded
    return re.compile(shape + r"(?:\?[A-Za-z0-9_.~%=&-]*)?")


PATTERNS = {t: _template_pattern(r) for t, r in ROUTER.routes.items()}


def check_upstream_path(route: Route, params: tuple[str, ...], upstream: str) -> None:
    """
    Assert that ``upstream`` is ``route``'s template with each parameter a
    single segment, never a dot-segment, decoding back to the parameter.
    """
    m = PATTERNS[route.type].fullmatch(upstream)
    assert m is not None, (route.type, upstream)
    for name, value in zip(route.params, params, strict=True):
        encoded = m.group(name)
        assert encoded not in (".", ".."), upstream
        assert unquote(encoded) == value, (encoded, value)
    path = upstream.partition("?")[0]
    assert not any(seg in (".", "..") for seg in path.split("/")), upstream


# -- inputs -------------------------------------------------------------------------

_TRICKY = [
    ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%252e", "%252e%252e", "%0a", "%0d%0a", "%00", "%7f",
    "/", "%2F", "%2f", "%252F", "\\", "%5C", "%", "%%", "%25", "%2", "%zz", "a%0ab", "é", "%C3%A9",
    "%FF", "%C3", "x" * 513, "", "?", "#", "%3F", "%23", ";", "&", "=", "+", "%20", "(", ")", "*",
]
segment = st.one_of(
    st.sampled_from(_TRICKY),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="/?#"), min_size=1, max_size=8),
    st.binary(min_size=1, max_size=6).map(lambda b: quote(b, safe="")),
    st.lists(st.sampled_from(_TRICKY + ["a", "1"]), min_size=1, max_size=3).map("".join),
)


@st.composite
def paths(draw: Any) -> bytes:
    """A request path: a route's, parameters filled with tricky segments, or noise."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=40))
    if kind == 1:
        return b"/" + "/".join(draw(st.lists(segment, max_size=5))).encode("utf-8", "surrogateescape")
    route = draw(st.sampled_from(ROUTES))
    path = route["path"]
    for name in re.findall(r"<([^>]+)>", path):
        path = path.replace(f"<{name}>", draw(segment), 1)
    return path.encode("utf-8")


queries = st.one_of(
    st.just(b""),
    st.binary(max_size=30),
    st.lists(st.tuples(segment, segment), max_size=4).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv).encode()),
    st.just(b"a=" + b"x" * 2050),
)
header_values = st.one_of(
    st.sampled_from([b"", b"\x01", b"t1", b"acme\n", b"a b", b"x" * 129, b"\xff", b"de, en", b"\x00"]),
    st.binary(max_size=12),
)
headers = st.lists(
    st.tuples(st.sampled_from([b"org_id", b"accept", b"accept-language", b"authorization", b"x-other"]), header_values),
    max_size=5,
)


class _Request:
    """What the resolver reads of a twisted.web request."""

    def __init__(self, uri: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        self.uri = uri
        self.path = uri.partition(b"?")[0]
        self.requestHeaders = Headers()
        for name, value in fields:
            self.requestHeaders.addRawHeader(name, value)
        self.route_type = "-"
        self.tenant = "-"


# -- target 1: request -> key -> upstream path -----------------------------------------


def request_to_upstream(path: bytes, query: bytes, fields: list[tuple[bytes, bytes]], other: bytes) -> None:
    """
    Resolve a request; a SPEC error or a key and an upstream path inside
    the route's template.  The same request with one keyed header added
    (``other``, whatever its bytes) has another key.
    """
    TRIED["request_to_upstream"] += 1
    uri = path + (b"?" + query if query else b"")
    try:
        resolved = RESOLVER.resolve(_Request(uri, fields))
    except DOMAIN_ERRORS as e:
        error = api_error(e)
        assert error is not None and error.code in SPEC_CODES, e
        return
    assert validate_tenant(resolved.tenant) == resolved.tenant
    assert resolved.key.tenant == resolved.tenant and resolved.key.params == resolved.params
    check_upstream_path(resolved.route, resolved.params, resolved.route.upstream_path(resolved.params, resolved.query))
    if not any(name == b"accept-language" for name, _ in fields):
        with_header = RESOLVER.resolve(_Request(uri, [*fields, (b"accept-language", other)]))
        assert with_header.key != resolved.key


# -- target 2: the same from the wire --------------------------------------------------


def _answer(path: str, fields: Any) -> UpstreamResponse:
    return UpstreamResponse(200, [(b"content-type", b"application/json")], b"{}")


class _Server:
    """One in-process server (site, API, memory store, fake upstream) reused across inputs."""

    def __init__(self) -> None:
        app = InMemoryAPI(
            CONFIG,
            auto=_answer,
            now=1000,
            max_bytes=1 << 22,
            node="fuzz",
            check_keys=True,
            limits=ConnectionLimits(max_body_bytes=4096),
        )
        self.clock, self.upstream, self.registry, self.site = app.clock, app.upstream, app.registry, app.site

    def send(self, data: bytes) -> bytes:
        # each input starts from an empty cache: a hit would hide a fetch
        # from the property (and make a failure flaky to shrink)
        self.registry.clear(None)
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        out = transport.value()
        protocol.connectionLost(None)
        return out


_SERVER: _Server | None = None
methods = st.sampled_from([b"GET", b"GET", b"GET", b"HEAD", b"DELETE", b"POST", b"PURGE", b"OPTIONS", b"G\x00T", b""])


def wire_to_upstream(
    method: bytes, path: bytes, query: bytes, tenant: bytes | None, fields: list[tuple[bytes, bytes]], body: bytes, key: bool
) -> None:
    """
    Send one request's bytes to the server: the answer is an HTTP answer,
    an error is a SPEC code as JSON (never a 500), and whatever reached the
    upstream lies inside a route's template.
    """
    global _SERVER
    TRIED["wire_to_upstream"] += 1
    if _SERVER is None:
        _SERVER = _Server()
    server = _SERVER
    assume(b"\r" not in path + query and b"\n" not in path + query)
    before = len(server.upstream.fetched)
    uri = path + (b"?" + query if query else b"")
    lines = [b"%s %s HTTP/1.1" % (method, uri), b"Host: x"]
    if key:
        lines.append(b"api-key: k1")
    if tenant is not None:
        lines.append(b"org_id: " + tenant)
    lines += [b"%s: %s" % (n, v.replace(b"\r", b"").replace(b"\n", b"")) for n, v in fields]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    out = server.send(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    if out:
        status_line, _, rest = out.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 "), out[:80]
        status = int(status_line.split(b" ")[1])
        assert status != 500, out
        if status >= 400 and method != b"HEAD":
            _, _, payload = rest.partition(b"\r\n\r\n")
            if b"transfer-encoding: chunked" in rest.lower():
                size, _, payload = payload.partition(b"\r\n")
                payload = payload[: int(size, 16)]
            assert json.loads(payload)["error"] in SPEC_CODES, out
    for fetch in server.upstream.fetched[before:]:
        matched = ROUTER.resolve(path)
        assert matched is not None, (path, fetch.path)
        route, params = matched
        check_upstream_path(route, params, fetch.path)


# -- target 3: event decoding ----------------------------------------------------------

ids = st.one_of(
    st.sampled_from(_TRICKY),
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=2),
)
tenants = st.one_of(st.none(), st.sampled_from(["acme", "acme\n", "", "a b", "x" * 129, "t1", "\u0661"]), st.text(max_size=8), st.integers())
events = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["object.update", "object.delete", "scoped.update", "other", ""])},
        optional={"objectid": ids, "org_id": tenants, "s": ids, "d": ids},
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=64),
    st.recursive(st.none() | st.integers() | st.text(max_size=5), lambda c: st.lists(c) | st.dictionaries(st.text(max_size=5), c), max_leaves=10).map(
        lambda v: json.dumps(v).encode()
    ),
    st.just(b"[" * 5000),
)


def event_decoding(value: bytes) -> None:
    """
    Decode a message value: actions naming known routes, valid tenants and
    non-empty parameters, or L{BadEvent}.
    """
    TRIED["event_decoding"] += 1
    try:
        actions = DECODER.decode(value)
    except BadEvent:
        return
    assert actions
    for action in actions:
        assert action.action in ("invalidate", "refresh")
        assert action.route in ROUTER.routes
        assert action.tenant is None or validate_tenant(action.tenant) == action.tenant
        assert len(action.params) == len(ROUTER.routes[action.route].params)
        assert all(isinstance(p, str) and p for p in action.params)


# -- target 4: upstream answers through the real client into the cache ---------------

UPSTREAM_CONFIG = parse_config(
    {
        "server": {"api_keys": ["k1"]},
        "upstream": {
            "base_url": "http://127.0.0.1:80/api",
            "timeout": 5.0,
            "max_body_bytes": 4096,
            "max_header_bytes": 2048,
            "tags_header": "surrogate-key",
            "hide_headers": ["x-hidden"],
        },
        "routes": [
            {"type": "upstream", "path": "/u/<id>", "upstream": "/u/{id}", "freshness": "upstream", "max_ttl": 600,
             "negative_ttl": 5, "tags": ["u:{id}"]},
            {"type": "route", "path": "/r/<id>", "upstream": "/r/{id}", "ttl": 30, "negative_ttl": 5,
             "stale_while_revalidate": 5},
        ],
    },
    "fuzz.toml",
    {},
)

_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NUMBERS = [b"0", b"1", b"60", b"-1", b"2147483648", b"9" * 400, b"0" * 50 + b"7", b"1.5", b"1e3", b"", b" 5", b"\xd9\xa3"]
_NAMES = [
    b"Content-Type", b"Content-Length", b"Transfer-Encoding", b"Content-Encoding", b"Cache-Control",
    b"CDN-Cache-Control", b"Expires", b"Date", b"Last-Modified", b"Age", b"Vary", b"ETag", b"Set-Cookie",
    b"Connection", b"Keep-Alive", b"Upgrade", b"Trailer", b"TE", b"Proxy-Connection", b"Location", b"Link",
    b"Content-Location", b"Surrogate-Key", b"X-Hidden", b"X-Cache", b"Alt-Svc", b"Cache-Status", b"Content-Range",
    b"Accept-Ranges", b"X-Other",
]
_VALUES = [
    b"chunked", b"gzip", b"gzip, chunked", b"identity", b"br", b"close", b"keep-alive", b"x-other, close",
    b"max-age=%s", b"s-maxage=%s", b"no-store", b"private", b"no-cache", b'no-cache="x-other"', b"must-understand, no-store",
    b"public, max-age=%s, stale-while-revalidate=%s, stale-if-error=%s", b"max-age=%s, must-revalidate",
    b"Sun, 06 Nov 1994 08:49:37 GMT", b"Sunday, 06-Nov-94 08:49:37 GMT", b"Sun Nov  6 08:49:37 1994", b"0",
    b"Thu, 01 Jan 2099 00:00:00 GMT", b"*", b"accept-encoding", b"accept-language, x-other", b'"e1"', b'W/"e2"',
    b"a=b; Path=/", b"http://127.0.0.1:80/api/u/7?x=1", b"<http://127.0.0.1:80/api/r/8>; rel=next",
    b"tag1 tag2 " + b"t" * 300, b"bytes 0-1/2", b"%s",
]
header_names = st.one_of(
    st.sampled_from(_NAMES),
    st.sampled_from(_NAMES),
    st.sampled_from(_NAMES).map(lambda n: n.lower()),
    st.binary(min_size=1, max_size=10).filter(lambda b: b":" not in b and b"\n" not in b and b"\r" not in b),
)
header_field_values = st.one_of(
    st.builds(lambda v, n: v.replace(b"%s", n), st.sampled_from(_VALUES), st.sampled_from(_NUMBERS)),
    st.sampled_from(_NUMBERS),
    st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
numbers = st.sampled_from(_NUMBERS) | st.integers(0, 10**12).map(lambda n: b"%d" % n)
_DIRECTIVES = [
    b"max-age=%s", b"s-maxage=%s", b"stale-while-revalidate=%s", b"stale-if-error=%s", b"no-store", b"private",
    b"no-cache", b"must-revalidate", b"must-understand", b"public", b'no-cache="x-other"', b'private="x-other"',
    b"proxy-revalidate", b"max-age", b'max-age="%s"',
]
cache_directives = st.lists(
    st.builds(lambda d, n: d.replace(b"%s", n), st.sampled_from(_DIRECTIVES), numbers), min_size=1, max_size=4
).map(b", ".join)
_DATES = [b"Sun, 06 Nov 1994 08:49:37 GMT", b"Thu, 01 Jan 2099 00:00:00 GMT", b"Sunday, 06-Nov-94 08:49:37 GMT",
          b"Sun Nov  6 08:49:37 1994", b"0", b"-1", b"Mon, 12 Jan 1970 13:46:40 GMT", b"not a date"]
header_fields = st.one_of(
    st.tuples(st.sampled_from([b"Cache-Control", b"CDN-Cache-Control", b"cache-control"]), cache_directives),
    st.tuples(st.sampled_from([b"Age", b"age"]), numbers | numbers.map(lambda n: n + b", 0")),
    st.tuples(st.sampled_from([b"Date", b"Expires", b"Last-Modified"]), st.sampled_from(_DATES)),
    st.tuples(header_names, header_field_values),
    st.tuples(header_names, header_field_values),
)
_STATUSES = [100, 101, 103, 199, 200, 201, 203, 204, 206, 300, 301, 304, 308, 400, 404, 405, 410, 414, 500, 501, 502, 599]
upstream_statuses = st.one_of(st.sampled_from(_STATUSES), st.sampled_from(_STATUSES), st.sampled_from([200, 200, 404]), st.integers(0, 1200))


@st.composite
def upstream_answers_bytes(draw: Any) -> tuple[bytes, bool]:
    """
    The bytes an upstream sends to one request, and whether it closes the
    connection after them: maybe interim 1xx answers, a status line, a
    header block (maybe with an obsolete line folding), and a body framed
    by a correct Content-Length, a correct chunked coding, the connection's
    close, or by whatever the headers claim.
    """
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        out += b"HTTP/1.1 %d Interim\r\nX-I: 1\r\n\r\n" % draw(st.sampled_from([100, 102, 103]))
    status = draw(upstream_statuses)
    version = draw(st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTQ/1.1"]))
    reason = draw(st.sampled_from([b" OK", b" OK", b" OK", b"", b" Weird Reason", b" \xff"]))
    fields = draw(st.lists(header_fields, max_size=8))
    framing = draw(st.sampled_from(["length", "length", "chunked", "close", "as-is"]))
    body = draw(st.sampled_from([b"", b"{}", b"x" * 5000]) | st.binary(max_size=64) | st.binary(max_size=64))
    head = [b"%s %d%s" % (version, status, reason)]
    if framing == "length":
        fields = [(n, v) for n, v in fields if n.lower() not in (b"content-length", b"transfer-encoding")]
        fields.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "chunked":
        fields = [(n, v) for n, v in fields if n.lower() not in (b"content-length", b"transfer-encoding")]
        fields.append((b"Transfer-Encoding", b"chunked"))
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif framing == "close":
        fields = [(n, v) for n, v in fields if n.lower() not in (b"content-length", b"transfer-encoding")]
    head += [b"%s: %s" % (n, v) for n, v in fields]
    if draw(st.integers(0, 19)) == 0:
        head.append(b" folded continuation")
    if draw(st.integers(0, 19)) == 0:
        head.append(b"X-Pad: " + b"p" * 3000)  # past max_header_bytes
    return out + b"\r\n".join(head) + b"\r\n\r\n" + body, framing in ("close", "as-is")


class _Scripted(Protocol):
    """The fuzzed upstream: to each request head, the drawn bytes."""

    def __init__(self, answer: bytes, close: bool) -> None:
        self.answer = answer
        self.close = close
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.buffer = b""
            self.transport.write(self.answer)  # type: ignore[union-attr]
            if self.close:
                self.transport.loseConnection()  # type: ignore[union-attr]


class _RecordingStore(MemoryStore):
    """A memory store that keeps every value it was given to store."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.stored: list[CachedResponse] = []

    def put(self, key: Any, entry: CachedResponse, token: Any, *args: Any, **kwargs: Any) -> Any:
        self.stored.append(entry)
        return super().put(key, entry, token, *args, **kwargs)


def _check_answer(out: bytes, method: bytes) -> int:
    """
    Assert that ``out`` is one well-formed answer that is not apicache's
    500 (a head of token-named fields, a body as long as its framing says);
    return its status.
    """
    assert out, "no answer"
    head, sep, body = out.partition(b"\r\n\r\n")
    assert sep, out[:200]
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 "), lines[0]
    status = int(lines[0].split(b" ")[1])
    assert 200 <= status <= 599, lines[0]  # a final status of three digits
    lengths = []
    names = set()
    for line in lines[1:]:
        name, colon, _ = line.partition(b": ")
        assert colon and _TOKEN_RE.fullmatch(name), line
        names.add(name.lower())
        if name.lower() == b"content-length":
            lengths.append(int(line.partition(b": ")[2]))
    # an upstream's own 500 is passed on as a proxied answer; apicache's
    # internal_error (a bug) carries no X-Cache
    assert status != 500 or b"x-cache" in names, out[:2000]
    if method != b"HEAD" and lengths:
        assert lengths == [len(body)], (lengths, len(body))
    return status


def upstream_answers(answer: tuple[bytes, bool], route: str, method: bytes) -> None:
    """
    Serve a GET (or HEAD) whose upstream sends ``answer``, through the real
    upstream client, twice: never a 500, every answer well formed, and every
    stored value one the store's load-time validation accepts, before and
    after the Redis codec.
    """
    TRIED["upstream_answers"] += 1
    config = UPSTREAM_CONFIG
    reactor = MemoryReactorClock()
    reactor.advance(1_000_000)
    up = config.upstream
    client = UpstreamClient(
        reactor, up.base_url, timeout=up.timeout, max_body_bytes=up.max_body_bytes, max_connections=4,
        max_in_flight=8, tenant_max_in_flight=4, max_header_bytes=up.max_header_bytes,
    )
    router = Router(config.routes)
    upstream = TimedUpstream(IntermediaryUpstream(client, up.set_headers, LinkTargets(up.base_url, config.routes, router)), Metrics(), reactor)
    store = _RecordingStore(1 << 20)
    registry = CacheRegistry(store, upstream, reactor, config.routes, up.keyed_headers, upstream_config=up)
    api = CacheAPI(config, registry, router, reactor, node="fuzz")
    site = ApiSite(api.resource(), reactor, None, access_log=False, keys=api.keys, limits=ConnectionLimits())
    data, close = answer
    reactor.listenTCP(80, Factory.forProtocol(lambda: _Scripted(data, close)), interface="127.0.0.1")
    completer = ConnectionCompleter(reactor)
    request = b"%s /%s/7 HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\nAccept-Encoding: gzip\r\n\r\n" % (method, route.encode())
    for _ in range(2):
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(request)
        pumps = []
        for _ in range(20):  # connect, exchange, until the answer is written
            pump = completer.succeedOnce()
            if pump is not None:
                pumps.append(pump)
            for p in pumps:
                p.flush()
            if transport.value():
                break
            reactor.advance(0.5)
        _check_answer(transport.value(), method)
        protocol.connectionLost(Failure(ConnectionDone()))
        reactor.advance(1)
    for entry in store.stored:
        assert entry_problem(entry) is None, (entry_problem(entry), entry.status, entry.headers)
        loaded = decode_entry(encode_entry(entry))
        assert loaded is not None and entry_problem(loaded) is None
        assert (loaded.status, loaded.headers, loaded.body) == (entry.status, tuple(entry.headers), entry.body)
    reactor.advance(up.timeout + 61)  # the deadlines and the pool's idle timers


#: Each target with the strategies of its arguments.
TARGETS: dict[str, tuple[Any, dict[str, Any]]] = {
    "request_to_upstream": (
        request_to_upstream,
        {"path": paths(), "query": queries, "fields": headers, "other": header_values},
    ),
    "wire_to_upstream": (
        wire_to_upstream,
        {
            "method": methods,
            "path": paths(),
            "query": queries,
            # mostly requests that get past the key and tenant checks
            "tenant": st.sampled_from([b"t1", b"t1", b"t2", None, b"a b"]),
            "fields": headers,
            "body": st.just(b"") | st.binary(max_size=8) | st.just(b"x" * 5000),
            "key": st.sampled_from([True, True, True, False]),
        },
    ),
    "event_decoding": (event_decoding, {"value": events}),
    "upstream_answers": (
        upstream_answers,
        {"answer": upstream_answers_bytes(), "route": st.sampled_from(["u", "r"]), "method": st.sampled_from([b"GET", b"GET", b"HEAD"])},
    ),
}
