"""
The bytes of a replayed answer's head, built once per stored answer: the
header block with names as twisted.web writes them, apicache's
``Cache-Status`` member (RFC 9211), and the ``Date`` apicache supplies.

Which headers are replayed is decided by L{apicache.cache.policy}; this
module only formats them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers as _TwistedHeaders

__all__ = [
    "canonical_name",
    "header_block",
    "shared_wire",
    "status_member",
    "date_header",
]

Headers = Sequence[tuple[bytes, bytes]]

_CANONICAL: dict[bytes, bytes] = {}


def canonical_name(name: bytes) -> bytes:
    """
    Return a header name as twisted.web writes it (``ETag``,
    ``Content-Type``), learnt from twisted.web itself once per name.
    """
    found = _CANONICAL.get(name)
    if found is None:
        found = next(iter(_TwistedHeaders({name: [b""]}).getAllRawHeaders()))[0]
        if len(_CANONICAL) < 1024:
            _CANONICAL[name] = found
    return found


def header_block(headers: Headers) -> bytes:
    """
    Return the replayed headers as the bytes written on the wire, built
    once per stored answer: each ``Name: value`` line, every
    ``Cache-Status`` the upstream sent merged on the last line, which is
    left open (``Cache-Status: `` or ``Cache-Status: upstream, ``) for the
    writer to append apicache's member to (RFC 9211 section 2: a cache
    appends its member).
    """
    lines = []
    upstream_status = []
    for name, value in headers:
        if name == b"cache-status":
            upstream_status.append(value)
        else:
            lines.append(b"%s: %s\r\n" % (canonical_name(name), value))
    lines.append(b"Cache-Status: ")
    if upstream_status:
        lines.append(b", ".join(upstream_status) + b", ")
    return b"".join(lines)


def status_member(
    hit: bool = False,
    ttl: float | None = None,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
) -> bytes:
    """
    Return apicache's ``Cache-Status`` member (RFC 9211 section 2), for
    example ``apicache;hit;ttl=12`` or
    ``apicache;fwd=uri-miss;fwd-status=200;stored``.

    @param ttl: seconds of freshness left (negative when stale), rounded down.
    @param fwd: why the upstream was asked (``uri-miss``, ``vary-miss``,
        ``miss``, ``stale``, ``method``).
    @param detail: a token: why it was not stored, or what happened.
    """
    parts = [b"apicache"]
    if hit:
        parts.append(b"hit")
    if fwd is not None:
        parts.append(b"fwd=" + fwd.encode("ascii"))
    if fwd_status is not None:
        parts.append(b"fwd-status=%d" % fwd_status)
    if ttl is not None:
        parts.append(b"ttl=%d" % math.floor(ttl))
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if detail is not None:
        parts.append(b"detail=" + detail.encode("ascii"))
    return b";".join(parts)


def date_header(now: float) -> bytes:
    """
    Return the HTTP-date of ``now`` (whole seconds), for a ``Date`` apicache
    supplies.
    """
    return datetimeToString(int(now))


#: Replayed headers seen lately, with their wire form: answers with the same
#: headers (most hold a Content-Type and the same second's Date) share one
#: tuple and one block (memory per entry).  Cleared when full, so that
#: sharing goes on as Dates move.
_WIRE: dict[tuple[tuple[bytes, bytes], ...], tuple[tuple[tuple[bytes, bytes], ...], bytes]] = {}
_WIRE_MAX = 4096


def shared_wire(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
    """
    Return ``headers`` and their L{header_block}, shared with earlier answers
    that had the same headers.
    """
    found = _WIRE.get(headers)
    if found is None:
        if len(_WIRE) >= _WIRE_MAX:
            _WIRE.clear()
        found = _WIRE[headers] = (headers, header_block(headers))
    return found
