"""
Byte ranges served from a stored 200 (RFC 9110 section 14, SPEC.md
section 3): pure functions that read C{Range} and C{If-Range} and say
which slice of the stored body to answer with, and how.

apicache answers one C{bytes=} range with a 206 (or 416 when it can't be
satisfied); anything else it may ignore (RFC 9110 section 14.2: a server
MAY ignore C{Range}) is answered with the whole 200: several ranges, an
unknown unit, an invalid range, a C{Range} on anything but a C{GET}, an
C{If-Range} that does not hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from apicache.cache.dates import parse_http_date
from apicache.cache.policy import strong_etag_match

__all__ = ["RangeSpec", "PartialAnswer", "parse_range", "resolve_range", "if_range_holds", "range_answer"]

_OWS = b" \t"
#: Numbers with more digits than this are only compared, never converted:
#: they exceed any length apicache stores.
_MAX_DIGITS = 18
_HUGE = 10**_MAX_DIGITS


class RangeSpec(NamedTuple):
    """
    One byte range as asked (RFC 9110 section 14.1.2).

    @ivar first: the first byte's offset, or C{None} for a suffix range.
    @ivar last: the last byte's offset (inclusive), or C{None} for "to the
        end" (and for a suffix range).
    @ivar suffix: a suffix range's length (the last C{suffix} bytes), or
        C{None}.  Offsets and lengths beyond 10^18 are held as 10^18.
    """

    first: int | None
    last: int | None
    suffix: int | None


class PartialAnswer(NamedTuple):
    """
    How a range request is answered from a stored body.

    @ivar status: 206, or 416 (Range Not Satisfiable).
    @ivar start: the slice of the body to send, C{body[start:stop]} (empty
        for a 416).
    @ivar stop: see C{start}.
    @ivar content_range: the C{Content-Range} value: C{bytes 0-99/1234},
        or C{bytes */1234} for a 416 (RFC 9110 section 14.4).
    """

    status: int
    start: int
    stop: int
    content_range: bytes


def _digits(text: bytes) -> bool:
    return bool(text) and text.isdigit()


def _number(digits: bytes) -> int:
    significant = digits.lstrip(b"0")
    # int() refuses more than 4300 digits: a huge offset is only ever past
    # the end, and a huge length covers everything
    return _HUGE if len(significant) > _MAX_DIGITS else int(significant or b"0")


def _less(a: bytes, b: bytes) -> bool:
    """
    Return whether decimal C{a} is less than decimal C{b}, exactly, at any
    length.
    """
    a, b = a.lstrip(b"0"), b.lstrip(b"0")
    return (len(a), a) < (len(b), b)


def parse_range(values: Sequence[bytes] | None) -> RangeSpec | None:
    """
    Return the one byte range a C{Range} field asks for (RFC 9110 section
    14.2), or C{None} when the whole representation is to be sent: no
    C{Range}, several lines, a unit other than C{bytes} (matched
    case-insensitively, section 14.1), several ranges, or an invalid one
    (not digits, or a last offset before the first).  Never raises.
    """
    if not values or len(values) != 1:
        return None
    unit, eq, range_set = values[0].strip(_OWS).partition(b"=")
    if not eq or unit.lower() != b"bytes":
        return None
    # RFC 9110 section 5.6.1: empty list members are not members
    specs = [s.strip(_OWS) for s in range_set.split(b",")]
    specs = [s for s in specs if s]
    if len(specs) != 1:
        return None
    first, dash, last = specs[0].partition(b"-")
    if not dash:
        return None
    if not first:
        return RangeSpec(None, None, _number(last)) if _digits(last) else None
    if not _digits(first):
        return None
    if not last:
        return RangeSpec(_number(first), None, None)
    if not _digits(last) or _less(last, first):
        return None
    return RangeSpec(_number(first), _number(last), None)


def resolve_range(spec: RangeSpec, length: int) -> PartialAnswer | None:
    """
    Return how one byte range of a representation of C{length} bytes is
    answered (RFC 9110 section 14.1.2): a 206 with the bytes the range
    covers (a last offset past the end is the end), or a 416 when it is
    not satisfiable (a first offset at or past the end, a suffix of
    length 0).  C{None} for a suffix range of an empty representation:
    satisfiable, yet no C{Content-Range} can state it, so the whole
    (empty) 200 is sent.
    """
    if spec.suffix is not None:
        if spec.suffix == 0:
            return _unsatisfiable(length)
        if length == 0:
            return None
        start = max(0, length - spec.suffix)
        end = length - 1
    else:
        assert spec.first is not None
        if spec.first >= length:
            return _unsatisfiable(length)
        start = spec.first
        end = length - 1 if spec.last is None else min(spec.last, length - 1)
    return PartialAnswer(206, start, end + 1, b"bytes %d-%d/%d" % (start, end, length))


def _unsatisfiable(length: int) -> PartialAnswer:
    return PartialAnswer(416, 0, 0, b"bytes */%d" % length)


def if_range_holds(if_range: Sequence[bytes] | None, etag: bytes | None, last_modified: bytes | None) -> bool:
    """
    Return whether a request's C{If-Range} lets its C{Range} apply to a
    stored answer with these validators (RFC 9110 section 13.1.5): true
    without C{If-Range}; an entity-tag must match the C{ETag} by the strong
    comparison (a weak tag never does); an HTTP-date must be exactly the
    C{Last-Modified} date.  Anything else (several lines, an invalid
    value, no validator to compare with) does not hold: the whole 200 is
    sent.
    """
    if not if_range:
        return True
    if len(if_range) != 1:
        return False
    value = if_range[0].strip(_OWS)
    if value[:1] == b'"' or value[:2] == b"W/":
        return etag is not None and strong_etag_match(value, etag)
    asked = parse_http_date(value)
    return asked is not None and asked == parse_http_date(last_modified)


def range_answer(
    method: bytes,
    status: int,
    range_values: Sequence[bytes] | None,
    if_range_values: Sequence[bytes] | None,
    etag: bytes | None,
    last_modified: bytes | None,
    length: int,
) -> PartialAnswer | None:
    """
    Return how a request is answered from a stored answer when it asks for
    a range of it, or C{None} when the whole answer is sent as stored: not
    a C{GET}, not a stored 200, no single valid byte range
    (L{parse_range}), or an C{If-Range} that does not hold
    (L{if_range_holds}).

    @param method: the request method (C{HEAD} ignores C{Range}, RFC 9110
        section 14.2).
    @param status: the stored answer's status.
    @param range_values: the request's C{Range} lines.
    @param if_range_values: the request's C{If-Range} lines.
    @param etag: the stored C{ETag}, or C{None}.
    @param last_modified: the stored C{Last-Modified}, or C{None}.
    @param length: the stored body's length in bytes.
    """
    if method != b"GET" or status != 200 or not range_values:
        return None
    spec = parse_range(range_values)
    if spec is None or not if_range_holds(if_range_values, etag, last_modified):
        return None
    return resolve_range(spec, length)
