"""
Fuzz targets, written as Hypothesis properties so that one definition
serves the short smoke run of ``make test`` and the long run of
``make fuzz``:

- L{request_to_upstream}: a request (path, query, headers) resolved to a
  route, a cache key and an upstream path (the resolver the fast path and
  the Klein route share);
- L{wire_to_upstream}: the same through the whole server, from the bytes
  of a request on the wire to what the upstream is asked for;
- L{event_decoding}: a Kafka message value decoded into cache actions.

The properties: no exception other than the SPEC's errors (a
L{DOMAIN_ERRORS} mapped to a SPEC code, L{BadEvent}), and no upstream path
outside its route's template (each parameter a single, non-dot segment
that decodes back to the parameter).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, unquote

from hypothesis import assume
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers

from apicache.cache.keys import validate_tenant
from apicache.cache.routes import Route, Router
from apicache.config import parse_config
from apicache.events.decoding import BadEvent, EventDecoder
from apicache.http.channel import ConnectionLimits
from apicache.http.errors import DOMAIN_ERRORS, api_error
from apicache.http.resolve import Resolver
from apicache.testing import InMemoryAPI
from apicache.upstream.client import UpstreamResponse

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
TRIED: dict[str, int] = {"request_to_upstream": 0, "wire_to_upstream": 0, "event_decoding": 0}


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
}
