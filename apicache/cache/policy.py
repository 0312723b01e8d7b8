"""
HTTP caching decisions, as pure functions of their inputs (no reactor, no
store, no I/O, no bytes written): what may be stored and why not, which
headers are replayed, how long an answer is fresh and how old it is
(RFC 9111 section 4.2), how a 304 updates a stored answer (section 4.3.4),
and whether a conditional request's validators match (RFC 9110 section 13).

How the replayed headers are written on the wire (the header block, the
``Cache-Status`` member, the ``Date``) is L{apicache.cache.wire}.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from apicache.cache.dates import first_delta_seconds, parse_delta_seconds, parse_http_date
from apicache.cache.targeted import DEFAULT_TARGETS, targeted_directives
from apicache.config import RouteConfig, UpstreamConfig

__all__ = [
    "HOP_BY_HOP",
    "NEVER_REPLAYED",
    "NEGATIVE",
    "ROUTE_STORABLE",
    "HEURISTIC",
    "UNDERSTOOD",
    "Freshness",
    "cache_control",
    "governing_directives",
    "status_not_stored",
    "only_if_cached",
    "normalise_accept_encoding",
    "varying_headers",
    "hidden_headers",
    "not_stored_reason",
    "is_storable",
    "replayed_headers",
    "withheld_fields",
    "freshness",
    "freshness_lifetime",
    "current_age",
    "is_fresh",
    "within_staleness",
    "header",
    "http_date",
    "upstream_age",
    "validators",
    "revalidation_matches",
    "updated_headers",
    "not_modified_headers",
    "weak_etag_match",
    "strong_etag_match",
    "none_match",
    "not_modified_since",
    "condition_fails",
]

Headers = Sequence[tuple[bytes, bytes]]

#: RFC 9110 section 7.6.1: hop-by-hop fields, never stored nor replayed.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
#: SPEC.md section 3: never replayed from the upstream (``age`` and
#: ``x-cache`` are apicache's own, ``content-length`` is written by apicache).
NEVER_REPLAYED = HOP_BY_HOP | frozenset({b"set-cookie", b"content-length", b"age", b"alt-svc", b"x-cache"})
#: RFC 9111 section 4.3.4: kept from the stored answer when a 304 updates it.
_NOT_UPDATED = frozenset({b"content-length", b"content-encoding", b"content-range"})
#: SPEC.md section 3: the headers of a 304 answered from the cache (Date,
#: Age, X-Cache and Cache-Status are written by the writer).
NOT_MODIFIED_HEADERS = (b"etag", b"last-modified", b"cache-control", b"expires", b"vary", b"content-location")
_NOT_MODIFIED_SET = frozenset(NOT_MODIFIED_HEADERS)
_BAD_VALUE_BYTES = (b"\r", b"\n", b"\x00")
#: Status codes stored while a route's ``negative_ttl`` is set.
NEGATIVE = frozenset({404, 410})
#: SPEC.md section 3 (v3): the statuses stored with ``freshness = "route"``
#: (for ``ttl``; 404 and 410 for ``negative_ttl``).
ROUTE_STORABLE = frozenset({200, 203, 204, 300, 301, 308})
#: RFC 9110 section 15.1: the heuristically cacheable statuses, stored with
#: ``freshness = "upstream"`` without explicit freshness.
HEURISTIC = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
#: RFC 9111 section 5.2.2.3: the statuses whose caching rules apicache
#: implements, those RFC 9110 section 15 defines (306 and 418 are only
#: reserved there): ``must-understand`` lets apicache ignore ``no-store``
#: for these, and stores an answer of any other status carrying it never.
UNDERSTOOD = frozenset(
    {100, 101, *range(200, 207), *range(300, 306), 307, 308, *range(400, 418), 421, 422, 426, *range(500, 506)}
)


def header(headers: Headers, name: bytes) -> bytes | None:
    """
    Return the values of the header ``name`` (lower case) joined with
    ``, ``, or ``None`` if ``headers`` has none.
    """
    values = [v for k, v in headers if k == name]
    if not values:
        return None
    return b", ".join(values)


def _split_list(value: bytes) -> list[bytes]:
    """
    Split a list-valued field (RFC 9110 section 5.6.1) on commas outside
    quoted strings.
    """
    items: list[bytes] = []
    current = bytearray()
    quoted = escaped = False
    for c in value:
        ch = bytes((c,))
        if escaped:
            escaped = False
        elif quoted and ch == b"\\":
            escaped = True
        elif ch == b'"':
            quoted = not quoted
        elif ch == b"," and not quoted:
            items.append(bytes(current).strip())
            current = bytearray()
            continue
        current += ch
    items.append(bytes(current).strip())
    return [i for i in items if i]


def cache_control(headers: Headers) -> dict[bytes, bytes | None]:
    """
    Return the ``Cache-Control`` directives of ``headers`` (RFC 9111
    section 5.2): lower-case names to their argument (quotes removed) or
    ``None``.  A directive given twice keeps its first argument.
    """
    directives: dict[bytes, bytes | None] = {}
    for name, value in headers:
        if name != b"cache-control":
            continue
        for item in _split_list(value):
            key, eq, arg = item.partition(b"=")
            key = key.strip().lower()
            if not key or key in directives:
                continue
            arg = arg.strip()
            if len(arg) >= 2 and arg[:1] == b'"' and arg[-1:] == b'"':
                arg = arg[1:-1]
            directives[key] = arg if eq else None
    return directives


def _delta_seconds(value: bytes | None) -> int | None:
    """
    Return a delta-seconds argument (RFC 9111 section 1.2.2), or ``None``
    if absent or malformed; one too large to hold is 2147483648 (400 digits
    made float() overflow, a 500; 4301 made int() refuse).
    """
    return parse_delta_seconds(value)


# -- request side ---------------------------------------------------------


_ENCODINGS: dict[bytes, bytes] = {}


def normalise_accept_encoding(values: Sequence[bytes] | None) -> bytes:
    """
    Return the caller's ``Accept-Encoding`` normalised as SPEC.md section 3
    says: ``gzip`` when it admits gzip with q > 0 (``gzip``, ``x-gzip`` or
    ``*`` not ruled out), else ``identity`` (absent included).
    """
    if not values:
        return b"identity"
    raw = b", ".join(values)
    found = _ENCODINGS.get(raw)
    if found is not None:
        return found
    q_of: dict[bytes, float] = {}
    for item in raw.split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip().lower()
        q = 1.0
        for p in params.split(b";"):
            k, _, v = p.partition(b"=")
            if k.strip().lower() == b"q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
                if not math.isfinite(q):
                    q = 0.0
        if coding:
            q_of.setdefault(coding, q)
    gzip_q = q_of.get(b"gzip", q_of.get(b"x-gzip", q_of.get(b"*", 0.0)))
    result = b"gzip" if gzip_q > 0 else b"identity"
    if len(_ENCODINGS) < 1024:
        _ENCODINGS[raw] = result
    return result


def only_if_cached(values: Sequence[bytes] | None) -> bool:
    """
    Return whether a request's ``Cache-Control`` lines hold
    ``only-if-cached`` (RFC 9111 section 5.2.1.7), the one request
    directive apicache obeys (SPEC.md section 3, v3): the caller wants a
    stored answer or a 504, never an upstream call.
    """
    if not values:
        return False
    for value in values:
        if b"only-if-cached" in value.lower():
            for item in _split_list(value):
                if item.partition(b"=")[0].strip().lower() == b"only-if-cached":
                    return True
    return False


def varying_headers(upstream: UpstreamConfig) -> frozenset[bytes]:
    """
    Return the request headers whose upstream value may differ between the
    callers sharing an entry: forwarded, not keyed and not fixed by
    ``set_headers``.  A ``Vary`` naming one of them (or ``*``) makes an
    answer unstorable (SPEC.md section 3).
    """
    keyed = set(upstream.keyed_headers)
    fixed = {h.lower() for h in upstream.set_headers}
    return frozenset(
        h.encode("ascii") for h in upstream.forward_headers if h not in keyed and h not in fixed
    )


def hidden_headers(upstream: UpstreamConfig) -> frozenset[bytes]:
    """
    Return the response headers the configuration keeps from callers:
    ``hide_headers`` and the ``tags_header``.
    """
    names = {h.lower().encode("ascii") for h in upstream.hide_headers}
    if upstream.tags_header:
        names.add(upstream.tags_header.lower().encode("ascii"))
    return frozenset(names)


# -- storing ----------------------------------------------------------------


def governing_directives(
    headers: Headers, route: RouteConfig | None = None, targets: Iterable[str | bytes] = DEFAULT_TARGETS
) -> tuple[dict[bytes, bytes | None], bool]:
    """
    Return the cache directives that govern an answer, for storing and
    freshness alike, and whether they came from a targeted field: with
    ``freshness = "upstream"``, the first of ``targets`` the answer carries
    with a valid, non-empty value (RFC 9213 section 2.2), which replaces
    ``Cache-Control`` and ``Expires``; else its ``Cache-Control``.

    @param route: the route; ``None`` or ``freshness = "route"``: targeted
        fields are not obeyed (SPEC.md section 2).
    """
    if route is not None and route.freshness == "upstream" and targets:
        targeted = targeted_directives(headers, targets)
        if targeted is not None:
            return targeted, True
    return cache_control(headers), False


def _explicit(headers: Headers, directives: Mapping[bytes, bytes | None], targeted: bool) -> bool:
    """
    Return whether an answer carries explicit freshness (RFC 9111 section
    4.2.1): ``s-maxage``, ``max-age``, or (unless a targeted field replaces
    it) ``Expires``, valid or not.
    """
    if b"s-maxage" in directives or b"max-age" in directives:
        return True
    return not targeted and any(name == b"expires" for name, _ in headers)


def _heuristic_base(headers: Headers) -> float | None:
    """
    Return the valid ``Last-Modified`` of an answer, from which heuristic
    freshness counts (RFC 9111 section 4.2.2), or ``None``.
    """
    return http_date(header(headers, b"last-modified"))


def status_not_stored(
    status: int,
    headers: Headers,
    directives: Mapping[bytes, bytes | None],
    targeted: bool = False,
    route: RouteConfig | None = None,
    negative_ttl: float = 0.0,
) -> bool:
    """
    Return whether an answer's status keeps it from being stored (SPEC.md
    section 3, "Storable", v3).

    With ``freshness = "route"`` (or no ``route``): 200, 203, 204, 300, 301
    and 308 are stored, 404 and 410 while ``negative_ttl`` is above 0.  With
    ``freshness = "upstream"``: any final status but 206 and 304 that
    carries explicit freshness (L{_explicit}), and the heuristically
    cacheable statuses (L{HEURISTIC}) without it; a 404 or 410 then needs
    heuristic freshness (a ``Last-Modified`` while the route's ``heuristic``
    is above 0) or a ``negative_ttl``.  An answer with ``must-understand``
    is stored only with a status whose caching rules apicache implements
    (RFC 9111 section 5.2.2.3, L{UNDERSTOOD}).

    @param directives: the governing directives (L{governing_directives}).
    @param negative_ttl: used without a ``route``.
    """
    if b"must-understand" in directives and status not in UNDERSTOOD:
        return True
    if route is None or route.freshness != "upstream":
        if route is not None:
            negative_ttl = route.negative_ttl
        return not (status in ROUTE_STORABLE or (status in NEGATIVE and negative_ttl > 0))
    if not 200 <= status <= 599 or status == 206 or status == 304:
        return True
    if _explicit(headers, directives, targeted):
        return False
    if status not in HEURISTIC:
        return True
    if status in NEGATIVE and route.negative_ttl <= 0:
        return not (route.heuristic > 0 and _heuristic_base(headers) is not None)
    return False


def not_stored_reason(
    status: int,
    headers: Headers,
    varying: Iterable[bytes],
    negative_ttl: float = 0.0,
    encoding: bytes = b"identity",
    route: RouteConfig | None = None,
    targets: Iterable[str | bytes] = DEFAULT_TARGETS,
) -> str | None:
    """
    Return why an upstream answer may not be stored, as the ``detail`` of
    its ``Cache-Status`` (SPEC.md section 3: ``status``, ``no-store``,
    ``private``, ``set-cookie``, ``vary``, ``encoding``), or ``None`` if it
    may (the store still decides ``too-large``).

    @param headers: the answer's headers, names in lower case.
    @param varying: request headers a ``Vary`` may not name
        (L{varying_headers}).
    @param negative_ttl: the route's, when no ``route`` is given.
    @param encoding: the normalised ``Accept-Encoding`` sent upstream.
    @param route: the route: its ``freshness`` mode decides which statuses
        are stored (L{status_not_stored}) and whether ``targets`` apply.
    @param targets: ``upstream.targeted_cache_control`` (RFC 9213).
    """
    directives, targeted = governing_directives(headers, route, targets)
    if status_not_stored(status, headers, directives, targeted, route, negative_ttl):
        return "status"
    # RFC 9111 section 5.2.2.3: must-understand overrides no-store for a
    # status whose rules apicache implements (the others stopped above)
    if b"no-store" in directives and b"must-understand" not in directives:
        return "no-store"
    # RFC 9111 section 5.2.2.7: a qualified private only strips the fields named
    if b"private" in directives and not directives[b"private"]:
        return "private"
    varying = frozenset(varying)
    content_encoding = b"identity"
    for name, value in headers:
        if name == b"set-cookie":
            return "set-cookie"
        if name == b"vary":
            for field in value.split(b","):
                field = field.strip().lower()
                if field == b"*" or field in varying:
                    return "vary"
        elif name == b"content-encoding":
            content_encoding = value.strip().lower() or b"identity"
    if content_encoding not in (encoding, b"identity"):
        return "encoding"
    return None


def is_storable(status: int, headers: Headers, varying: Iterable[bytes], negative_ttl: float = 0.0) -> bool:
    """
    Return whether an upstream answer may be stored (L{not_stored_reason}
    gives no reason).
    """
    return not_stored_reason(status, headers, varying, negative_ttl) is None


def _named_fields(directives: Mapping[bytes, bytes | None], passed: bool = False) -> set[bytes]:
    """
    Return the fields named by a qualified ``no-cache="…"`` or
    ``private="…"`` (RFC 9111 sections 5.2.2.4 and 5.2.2.7); only those
    ``private`` names when the answer is ``passed`` on to the caller whose
    request fetched it (section 5.2.2.4 forbids only reusing them).
    """
    names: set[bytes] = set()
    for d in (b"private",) if passed else (b"no-cache", b"private"):
        arg = directives.get(d)
        if arg:
            names.update(f.strip().lower() for f in arg.split(b",") if f.strip())
    return names


def replayed_headers(
    headers: Headers,
    hidden: Iterable[bytes] = (),
    date: bytes | None = None,
    passed: bool = False,
    directives: Mapping[bytes, bytes | None] | None = None,
) -> tuple[tuple[bytes, bytes], ...]:
    """
    Return the headers of an upstream answer that are stored and replayed
    to callers (SPEC.md section 3), in their order: all but the hop-by-hop
    ones and those named by ``Connection``, ``set-cookie``,
    ``content-length``, ``age``, ``alt-svc``, ``x-cache``, the ``hidden``
    ones, the fields named by a qualified ``no-cache``/``private``, and any
    header whose value holds CR, LF or NUL.

    @param headers: the answer's headers, names in lower case (the
        upstream's ``Connection`` among them: Twisted's client keeps it
        apart, L{apicache.upstream.client} puts it back).
    @param date: the ``Date`` to add when the answer has none (apicache's
        own, RFC 9110 section 6.6.1), or ``None`` to add nothing.
    @param passed: the headers are for an answer passed on, not stored:
        an answer that is not stored, or the answer the caller whose
        request fetched it gets (SPEC.md section 3, v3): ``Set-Cookie`` is
        kept when the answer carries it (then it is never stored), and so
        are the fields a qualified ``no-cache="…"`` names (RFC 9111 section
        5.2.2.4: only their reuse is forbidden).
    @param directives: the governing directives (L{governing_directives}),
        when not the answer's ``Cache-Control``.
    """
    dropped = set(NEVER_REPLAYED)
    if passed:
        dropped.discard(b"set-cookie")
    dropped.update(hidden)
    for name, value in headers:
        if name == b"connection":
            dropped.update(t.strip().lower() for t in value.split(b","))
    dropped.update(_named_fields(cache_control(headers) if directives is None else directives, passed))
    kept = [
        (name, value)
        for name, value in headers
        if name not in dropped and not any(c in value for c in _BAD_VALUE_BYTES) and _token(name)
    ]
    if date is not None and not any(name == b"date" for name, _ in kept):
        kept.append((b"date", date))
    return tuple(kept)


def withheld_fields(headers: Headers, directives: Mapping[bytes, bytes | None] | None = None) -> bool:
    """
    Return whether the answer the fetching caller gets differs from the
    stored copy (L{replayed_headers} with and without ``passed``): it
    carries a field a qualified ``no-cache="…"`` names.  Cheap for the
    common answer, which names none.
    """
    d = cache_control(headers) if directives is None else directives
    arg = d.get(b"no-cache")
    if not arg:
        return False
    named = {f.strip().lower() for f in arg.split(b",")}
    return any(name in named for name, _ in headers)


def _token(name: bytes) -> bool:
    """
    Return whether a field name is a token (RFC 9110 section 5.1), so that
    it can be written as it is.
    """
    return bool(name) and not name.translate(None, _TCHAR)


_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# -- freshness (RFC 9111 section 4.2) ---------------------------------------


def http_date(value: bytes | None) -> float | None:
    """
    Return an HTTP-date (RFC 9110 section 5.6.7) as a POSIX time, or
    ``None`` if absent or invalid: the three forms of the RFC only, matched
    case-insensitively (L{apicache.cache.dates.parse_http_date}).
    """
    parsed = parse_http_date(value)
    return None if parsed is None else float(parsed)


class Freshness:
    """
    How an answer ages once stored (RFC 9111 section 4.2).

    @ivar lifetime: seconds it is fresh for, counted from age 0.
    @ivar initial_age: its corrected initial age when received (section 4.2.3).
    @ivar stale_while_revalidate: seconds past expiry it may be served while
        revalidated in the background.
    @ivar stale_if_error: seconds past expiry it may be served on an
        upstream failure.
    @ivar no_cache: it must be revalidated before every use (section 5.2.2.4).
    @ivar no_stale: it must never be served stale (``must-revalidate``,
        ``proxy-revalidate``, ``s-maxage``: sections 5.2.2.2, 5.2.2.8, 5.2.2.10).
    """

    __slots__ = ("lifetime", "initial_age", "stale_while_revalidate", "stale_if_error", "no_cache", "no_stale")

    def __init__(
        self,
        lifetime: float,
        initial_age: float = 0.0,
        stale_while_revalidate: float = 0.0,
        stale_if_error: float = 0.0,
        no_cache: bool = False,
        no_stale: bool = False,
    ) -> None:
        self.lifetime = lifetime
        self.initial_age = initial_age
        self.stale_while_revalidate = stale_while_revalidate
        self.stale_if_error = stale_if_error
        self.no_cache = no_cache
        self.no_stale = no_stale

    def __repr__(self) -> str:
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__)
        return f"Freshness({fields})"


def upstream_age(headers: Headers) -> int | None:
    """
    Return the upstream's ``Age`` (RFC 9111 section 5.1), or ``None`` when
    it is absent or invalid (then it is ignored).  With several values (a
    list, or several lines) it counts by its first (SPEC.md section 3, v3).
    """
    return first_delta_seconds([v for k, v in headers if k == b"age"])


def freshness(
    route: RouteConfig,
    status: int,
    headers: Headers,
    request_time: float,
    response_time: float,
    age: int | None = None,
    targets: Iterable[str | bytes] = DEFAULT_TARGETS,
) -> Freshness:
    """
    Return how a stored answer ages.

    With ``freshness = "route"`` it is fresh for the route's ``ttl`` (its
    ``negative_ttl`` for a 404 or 410) from the moment it arrived.  With
    ``"upstream"`` the upstream decides as a shared cache would (RFC 9111
    section 4.2.1): the first of ``targets`` with a valid value in place of
    ``Cache-Control`` and ``Expires`` (RFC 9213); ``s-maxage``, else
    ``max-age``, else ``Expires`` minus ``Date``; else, for a heuristically
    cacheable status with a ``Last-Modified``, the route's ``heuristic``
    times ``Date`` minus ``Last-Modified`` (section 4.2.2; 0 turns it off);
    the route's value when it gives none; never more than ``max_ttl``;
    invalid freshness information (an unparsable ``Expires``, ``Expires:
    0``, a malformed ``max-age``) means already stale.  The age starts at
    the corrected initial age (section 4.2.3); an invalid ``Age`` is
    ignored.  ``stale-while-revalidate``/``stale-if-error`` of the answer
    (RFC 5861) override the route's keys; an answer that must be
    revalidated before every use (``no-cache``) is never served stale
    (section 5.2.2.4), whatever they say.

    @param request_time: when the upstream request was sent.
    @param response_time: when the answer arrived.
    @param age: the answer's valid ``Age`` (L{upstream_age}), when its
        ``headers`` no longer hold it.
    @param targets: ``upstream.targeted_cache_control``.
    """
    default = route.negative_ttl if status in NEGATIVE else route.ttl
    swr = float(route.stale_while_revalidate)
    sie = float(route.stale_if_error)
    if route.freshness != "upstream":
        return Freshness(float(default), 0.0, swr, sie)
    directives, targeted = governing_directives(headers, route, targets)
    lifetime: float | None = None
    no_stale = b"must-revalidate" in directives or b"proxy-revalidate" in directives
    if b"s-maxage" in directives:
        no_stale = True
        s = _delta_seconds(directives[b"s-maxage"])
        lifetime = 0.0 if s is None else float(s)
    elif b"max-age" in directives:
        m = _delta_seconds(directives[b"max-age"])
        lifetime = 0.0 if m is None else float(m)
    elif not targeted:
        expires = [v for k, v in headers if k == b"expires"]
        if expires:
            date = http_date(header(headers, b"date"))
            when = http_date(expires[0]) if len(expires) == 1 else None
            if when is None:
                lifetime = 0.0
            else:
                lifetime = max(0.0, when - (date if date is not None else response_time))
    if lifetime is None and status in HEURISTIC and route.heuristic > 0:
        modified = _heuristic_base(headers)
        if modified is not None:
            date = http_date(header(headers, b"date"))
            lifetime = max(0.0, route.heuristic * ((date if date is not None else response_time) - modified))
    if lifetime is None:
        lifetime = float(default)
    lifetime = max(0.0, min(lifetime, float(route.max_ttl)))
    for name, attr in ((b"stale-while-revalidate", "swr"), (b"stale-if-error", "sie")):
        if name in directives:
            n = _delta_seconds(directives[name])
            if n is not None:
                if attr == "swr":
                    swr = float(n)
                else:
                    sie = float(n)
    # section 4.2.3
    date_value = http_date(header(headers, b"date"))
    apparent_age = max(0.0, response_time - date_value) if date_value is not None else 0.0
    age_value = age if age is not None else upstream_age(headers) or 0
    response_delay = max(0.0, response_time - request_time)
    initial_age = max(apparent_age, age_value + response_delay)
    # a qualified no-cache="…" only strips the fields it names
    no_cache = b"no-cache" in directives and not directives[b"no-cache"]
    if no_stale or no_cache:
        swr = sie = 0.0
    return Freshness(lifetime, initial_age, swr, sie, no_cache=no_cache, no_stale=no_stale)


def freshness_lifetime(route: RouteConfig, status: int, headers: Headers, now: float = 0.0) -> float:
    """
    Return how many seconds an answer received at ``now`` stays fresh
    (L{freshness}'s lifetime).
    """
    return freshness(route, status, headers, now, now).lifetime


def current_age(stored_at: float, now: float) -> float:
    """
    Return the age at ``now`` of an entry whose age was 0 at ``stored_at``,
    in seconds (never negative, RFC 9111 section 4.2.3: the initial age is
    folded into ``stored_at``).
    """
    age = now - stored_at
    return age if age > 0 else 0.0


def is_fresh(expires_at: float, stale: bool, now: float) -> bool:
    """
    Return whether an entry expiring at ``expires_at`` may be served as
    fresh (a ``HIT``) at ``now``: not past its lifetime and not marked stale
    by a ``refresh`` event.
    """
    return not stale and now < expires_at


def within_staleness(vouched_until: float, max_staleness: float, now: float) -> bool:
    """
    Return whether an entry may be served from the cache at all under a
    route's ``max_staleness`` (SPEC.md section 5, bounded staleness): while
    ``now`` is at most ``max_staleness`` seconds past ``vouched_until``,
    the time up to which its fetch and the event stream vouch for it
    (max(F, W)).  Always, when ``max_staleness`` is 0.  This comes before
    every other serving rule: fresh, stale, 304 from the cache.
    """
    return max_staleness <= 0 or now - vouched_until <= max_staleness


# -- revalidation (RFC 9111 section 4.3) ------------------------------------


def validators(headers: Headers) -> list[tuple[bytes, bytes]]:
    """
    Return the request headers that revalidate a stored answer
    (RFC 9111 section 4.3.1): ``If-None-Match`` with its ``ETag``,
    ``If-Modified-Since`` with its ``Last-Modified``; empty without either.
    """
    found = []
    etag = header(headers, b"etag")
    if etag is not None:
        found.append((b"if-none-match", etag))
    modified = header(headers, b"last-modified")
    if modified is not None and http_date(modified) is not None:
        found.append((b"if-modified-since", modified))
    return found


def revalidation_matches(stored: Headers, not_modified: Headers) -> bool:
    """
    Return whether a 304 confirms the stored answer (RFC 9111 section
    4.3.4): its ``ETag`` matches the stored one by the weak comparison (so
    the ``W/"…"`` validators of Express, Rails or nginx with gzip confirm),
    else (without an ``ETag``) the stored answer has the same
    ``Last-Modified``, or the 304 carries no validator and the stored
    answer has one.
    """
    stored_etag = header(stored, b"etag")
    new_etag = header(not_modified, b"etag")
    if new_etag is not None:
        return stored_etag is not None and weak_etag_match(stored_etag, new_etag)
    stored_lm = header(stored, b"last-modified")
    new_lm = header(not_modified, b"last-modified")
    if new_lm is not None:
        return stored_lm is not None and http_date(stored_lm) == http_date(new_lm) and http_date(new_lm) is not None
    return stored_etag is not None or stored_lm is not None


def updated_headers(stored: Headers, not_modified: Headers, replayed: Headers) -> tuple[tuple[bytes, bytes], ...]:
    """
    Return a stored answer's headers updated by a 304 (RFC 9111 section
    4.3.4): every header the 304 carries (already filtered by
    L{replayed_headers} into ``replayed``) replaces the stored ones of
    that name, except ``content-length``, ``content-encoding`` and
    ``content-range``; the other stored headers stay, in their order.
    """
    new = [(k, v) for k, v in replayed if k not in _NOT_UPDATED]
    names = {k for k, _ in new}
    del not_modified
    return tuple([(k, v) for k, v in stored if k not in names] + new)


def not_modified_headers(stored: Headers) -> tuple[tuple[bytes, bytes], ...]:
    """
    Return the stored headers a 304 answered from the cache carries
    (SPEC.md section 3; RFC 9110 section 15.4.5): ``ETag``,
    ``Last-Modified``, ``Cache-Control``, ``Expires``, ``Vary``,
    ``Content-Location`` and ``Date`` (the writer adds ``Age``, ``X-Cache``
    and ``Cache-Status``).
    """
    return tuple([(k, v) for k, v in stored if k in _NOT_MODIFIED_SET or k == b"date"])


# -- conditional requests (RFC 9110 section 13.1) ---------------------------


def _opaque_tags(value: bytes) -> list[bytes] | None:
    """
    Return the entity-tags of an ``If-None-Match`` value (each as sent, with
    ``W/`` and quotes), or ``None`` for ``*``.
    """
    value = value.strip()
    if value == b"*":
        return None
    return [t.strip() for t in value.split(b",") if t.strip()]


def _is_entity_tag(tag: bytes) -> bool:
    return len(tag) >= 2 and tag[:1] == b'"' and tag[-1:] == b'"' and b'"' not in tag[1:-1]


def weak_etag_match(a: bytes, b: bytes) -> bool:
    """
    Return whether entity-tags ``a`` and ``b`` match by the weak comparison
    of RFC 9110 section 8.8.3.2: their opaque-tags are equal, whether
    either is weak (``W/``) or not.
    """
    a, b = a.strip(), b.strip()
    if a.startswith(b"W/"):
        a = a[2:]
    if b.startswith(b"W/"):
        b = b[2:]
    return _is_entity_tag(a) and a == b


def strong_etag_match(a: bytes, b: bytes) -> bool:
    """
    Return whether entity-tags ``a`` and ``b`` match by the strong
    comparison of RFC 9110 section 8.8.3.2: neither is weak and their
    opaque-tags are equal.
    """
    a, b = a.strip(), b.strip()
    return _is_entity_tag(a) and a == b


def none_match(if_none_match: bytes, etag: bytes | None) -> bool:
    """
    Return whether ``If-None-Match`` holds for a representation whose
    entity-tag is ``etag`` (RFC 9110 section 13.1.2): false (the condition
    fails, a ``GET`` answers ``304``) when it is ``*`` and the
    representation exists, or one of its tags matches ``etag`` weakly.
    """
    tags = _opaque_tags(if_none_match)
    if tags is None:
        return False
    if etag is None:
        return True
    return not any(weak_etag_match(t, etag) for t in tags)


def not_modified_since(if_modified_since: bytes, last_modified: bytes | None) -> bool:
    """
    Return whether a representation last modified at ``last_modified`` has
    not been modified since ``if_modified_since`` (RFC 9110 section 13.1.3:
    a ``GET`` then answers ``304``).  An invalid date, or no
    ``Last-Modified``, means modified: the condition is ignored.  RFC 9110
    section 13.2.2: callers evaluate it only without ``If-None-Match``.
    """
    if last_modified is None:
        return False
    since, modified = http_date(if_modified_since), http_date(last_modified)
    if since is None or modified is None:
        return False
    return modified <= since


def condition_fails(
    if_none_match: Sequence[bytes] | None, if_modified_since: Sequence[bytes] | None, stored: Headers
) -> bool:
    """
    Return whether a ``GET``/``HEAD`` with these conditional headers is
    answered ``304`` from a stored 2xx answer (RFC 9110 section 13.2.2):
    ``If-None-Match`` when present (weak comparison, ``*`` matches),
    else ``If-Modified-Since``.
    """
    if if_none_match:
        return not none_match(b", ".join(if_none_match), header(stored, b"etag"))
    if if_modified_since:
        return not_modified_since(if_modified_since[0], header(stored, b"last-modified"))
    return False
