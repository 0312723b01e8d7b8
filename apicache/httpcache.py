"""
HTTP caching decisions, as pure functions of their inputs (no reactor, no
store, no I/O): what may be stored, which headers are kept and replayed,
how long an answer is fresh and how old it is, and whether a conditional
request's validators match.

Today the freshness lifetime is the route's ``ttl`` (SPEC.md section 2,
``freshness = "route"``); the functions take the upstream's status and
headers so that RFC 9111's ``freshness = "upstream"`` fits in here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from email.utils import parsedate_to_datetime

from apicache.config import RouteConfig

__all__ = [
    "STORED_HEADERS",
    "PASSED_HEADERS",
    "is_storable",
    "kept_headers",
    "freshness_lifetime",
    "current_age",
    "is_fresh",
    "within_staleness",
    "weak_etag_match",
    "none_match",
    "not_modified_since",
]

Headers = Sequence[tuple[bytes, bytes]]

#: Headers stored with a body and replayed on hits.
STORED_HEADERS = (b"content-type", b"content-encoding", b"content-language", b"etag", b"last-modified")
#: Further headers passed through on answers that are not stored.
PASSED_HEADERS = STORED_HEADERS + (b"location", b"www-authenticate", b"retry-after")
_STORED_SET = frozenset(STORED_HEADERS)
_PASSED_SET = frozenset(PASSED_HEADERS)


def is_storable(status: int, headers: Headers, keyed_headers: Iterable[str]) -> bool:
    """
    Return whether an upstream answer may be stored (SPEC.md section 3): a
    ``200`` without ``no-store``/``private``, without ``Set-Cookie``, whose
    ``Vary`` names only keyed headers.

    @param headers: the answer's headers, names in lower case.
    """
    if status != 200:
        return False
    keyed = set(keyed_headers)
    for name, value in headers:
        if name == b"set-cookie":
            return False
        if name == b"cache-control":
            directives = {d.split(b"=", 1)[0].strip().lower() for d in value.split(b",")}
            if b"no-store" in directives or b"private" in directives:
                return False
        elif name == b"vary":
            for field in value.split(b","):
                field = field.strip().lower()
                if field and (field == b"*" or field.decode("latin-1") not in keyed):
                    return False
    return True


def kept_headers(headers: Headers, storable: bool) -> tuple[tuple[bytes, bytes], ...]:
    """
    Return the headers of an upstream answer that are kept and replayed to
    callers: L{STORED_HEADERS} for an answer that is stored, those and
    L{PASSED_HEADERS} for one that is only passed through.
    """
    keep = _STORED_SET if storable else _PASSED_SET
    return tuple([(k, v) for k, v in headers if k in keep])


def freshness_lifetime(route: RouteConfig, status: int, headers: Headers) -> float:
    """
    Return how many seconds an answer stays fresh once fetched: the route's
    ``ttl`` (``freshness = "route"``; the answer's status and headers are
    for the upstream's own freshness, RFC 9111 section 4.2.1).
    """
    return float(route.ttl)


def current_age(stored_at: float, now: float) -> float:
    """
    Return the age of an entry fetched at ``stored_at``, in seconds (never
    negative, RFC 9111 section 4.2.3 with the fetch time as date).
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
    every other serving rule: fresh, stale, stale-if-error.
    """
    return max_staleness <= 0 or now - vouched_until <= max_staleness


def _opaque_tags(value: bytes) -> list[bytes] | None:
    """
    Return the entity-tags of an ``If-None-Match`` value (each as sent, with
    ``W/`` and quotes), or ``None`` for ``*``.
    """
    value = value.strip()
    if value == b"*":
        return None
    return [t.strip() for t in value.split(b",") if t.strip()]


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
    return len(a) >= 2 and a[:1] == b'"' and a[-1:] == b'"' and a == b


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


def _http_date(value: bytes) -> float | None:
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


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
    since, modified = _http_date(if_modified_since), _http_date(last_modified)
    if since is None or modified is None:
        return False
    return modified <= since
