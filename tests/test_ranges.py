"""
One byte range from a stored 200 (RFC 9110 section 14, SPEC.md section 3):
L{apicache.cache.ranges}.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apicache.cache import ranges
from apicache.cache.ranges import (
    PartialAnswer,
    RangeSpec,
    if_range_holds,
    parse_range,
    range_answer,
    resolve_range,
)
from apicache.testing import python_lines

ETAG = b'"v1"'
LAST_MODIFIED = b"Sun, 06 Nov 1994 08:49:37 GMT"


# -- Range (RFC 9110 section 14.2) ---------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"bytes=0-99", RangeSpec(0, 99, None)),
        (b"bytes=100-", RangeSpec(100, None, None)),
        (b"bytes=-50", RangeSpec(None, None, 50)),
        (b"bytes=-0", RangeSpec(None, None, 0)),
        (b"bytes=5-5", RangeSpec(5, 5, None)),
        (b"BYTES=0-1", RangeSpec(0, 1, None)),  # section 14.1: units are case-insensitive
        (b"bytes=0-1,", RangeSpec(0, 1, None)),  # section 5.6.1: empty members are not members
        (b"bytes=, 0-1", RangeSpec(0, 1, None)),
        (b" bytes=0-1 ", RangeSpec(0, 1, None)),
        (b"bytes=007-0010", RangeSpec(7, 10, None)),
    ],
)
def test_rfc9110_14_2_one_byte_range(value: bytes, expected: RangeSpec) -> None:
    assert parse_range([value]) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"bytes=0-1,2-3",  # several ranges: the whole 200
        b"bytes=0-1, -5",
        b"bytes=5-4",  # section 14.1.1: last before first is invalid
        b"bytes=",
        b"bytes=-",
        b"bytes=a-b",
        b"bytes=1",
        b"bytes=+1-2",
        b"bytes=1--2",
        b"bytes=1-2-3",
        b"bytes=1 -2",
        b"bytes=0x1-2",
        b"items=0-1",  # an unknown unit is ignored
        b"bytes 0-1",
        b"0-1",
        b"",
        b"bytes=\xd9\xa1-2",  # a digit that is not ASCII
        b"bytes=99999999999999999999999-99999999999999999999998",  # invalid, at any length
    ],
)
def test_rfc9110_14_2_anything_else_means_the_whole_answer(value: bytes) -> None:
    assert parse_range([value]) is None


def test_rfc9110_14_2_no_range_or_several_lines() -> None:
    assert parse_range(None) is None
    assert parse_range([]) is None
    assert parse_range([b"bytes=0-1", b"bytes=2-3"]) is None


def test_huge_numbers_do_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Offsets of any length are read at once (int() refuses more than 4300
    digits): a few lines of Python, never a loop over the digits, and no
    int() of more than 18 digits, counted rather than timed.
    """
    converted: list[int] = []
    monkeypatch.setattr(ranges, "int", lambda digits: converted.append(len(digits)) or int(digits), raising=False)
    huge = b"9" * 100_000
    parsed, lines = python_lines(
        lambda: [
            parse_range([b"bytes=0-" + huge]),
            parse_range([b"bytes=" + huge + b"-"]),
            parse_range([b"bytes=-" + huge]),
            parse_range([b"bytes=" + huge + b"-" + huge + b"9"]),
        ]
    )
    assert parsed == [
        RangeSpec(0, 10**18, None),
        RangeSpec(10**18, None, None),
        RangeSpec(None, None, 10**18),
        RangeSpec(10**18, 10**18, None),
    ]
    assert lines < 1000, lines
    assert max(converted, default=0) <= 18, converted
    assert resolve_range(RangeSpec(0, 10**18, None), 10) == PartialAnswer(206, 0, 10, b"bytes 0-9/10")
    assert resolve_range(RangeSpec(10**18, None, None), 10) == PartialAnswer(416, 0, 0, b"bytes */10")
    assert resolve_range(RangeSpec(None, None, 10**18), 10) == PartialAnswer(206, 0, 10, b"bytes 0-9/10")


# -- satisfiable or not (RFC 9110 section 14.1.2, 14.4, 15.5.17) ---------


@pytest.mark.parametrize(
    ("value", "length", "expected"),
    [
        (b"bytes=0-99", 1000, PartialAnswer(206, 0, 100, b"bytes 0-99/1000")),
        (b"bytes=0-0", 1000, PartialAnswer(206, 0, 1, b"bytes 0-0/1000")),
        (b"bytes=990-", 1000, PartialAnswer(206, 990, 1000, b"bytes 990-999/1000")),
        (b"bytes=990-2000", 1000, PartialAnswer(206, 990, 1000, b"bytes 990-999/1000")),  # last past the end
        (b"bytes=999-999", 1000, PartialAnswer(206, 999, 1000, b"bytes 999-999/1000")),
        (b"bytes=-10", 1000, PartialAnswer(206, 990, 1000, b"bytes 990-999/1000")),  # suffix
        (b"bytes=-5000", 1000, PartialAnswer(206, 0, 1000, b"bytes 0-999/1000")),  # suffix longer than all
        (b"bytes=1000-", 1000, PartialAnswer(416, 0, 0, b"bytes */1000")),  # first at the end
        (b"bytes=5000-6000", 1000, PartialAnswer(416, 0, 0, b"bytes */1000")),
        (b"bytes=-0", 1000, PartialAnswer(416, 0, 0, b"bytes */1000")),
        (b"bytes=0-", 0, PartialAnswer(416, 0, 0, b"bytes */0")),  # empty representation
        (b"bytes=-0", 0, PartialAnswer(416, 0, 0, b"bytes */0")),
        (b"bytes=-1", 0, None),  # satisfiable, yet no Content-Range states it: the whole 200
    ],
)
def test_rfc9110_14_1_2_satisfiable_ranges_and_416(value: bytes, length: int, expected: PartialAnswer | None) -> None:
    spec = parse_range([value])
    assert spec is not None
    assert resolve_range(spec, length) == expected


@given(
    st.integers(min_value=0, max_value=10_000),
    st.one_of(
        st.tuples(st.integers(0, 20_000), st.none() | st.integers(0, 20_000)).filter(
            lambda t: t[1] is None or t[1] >= t[0]
        ),
        st.integers(0, 20_000).map(lambda n: (None, n)),
    ),
)
def test_rfc9110_14_4_content_range_states_the_slice(length: int, asked: tuple[int | None, int | None]) -> None:
    first, last = asked
    if first is None:
        assert last is not None
        value = b"bytes=-%d" % last
    else:
        value = b"bytes=%d-%s" % (first, b"" if last is None else b"%d" % last)
    spec = parse_range([value])
    assert spec is not None
    answer = resolve_range(spec, length)
    body = bytes(range(256)) * (length // 256 + 1)
    body = body[:length]
    if answer is None:
        assert length == 0 and first is None
        return
    if answer.status == 416:
        assert answer.content_range == b"bytes */%d" % length
        assert (first is not None and first >= length) or (first is None and last == 0)
        return
    assert answer.status == 206
    part = body[answer.start : answer.stop]
    assert part
    start, _, rest = answer.content_range.removeprefix(b"bytes ").partition(b"-")
    end, _, total = rest.partition(b"/")
    assert (int(start), int(end) + 1, int(total)) == (answer.start, answer.stop, length)
    if first is None:
        assert last is not None
        assert part == body[-last:]
    else:
        assert part == body[first : None if last is None else last + 1]


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=100))
def test_parse_and_resolve_never_raise(value: bytes, length: int) -> None:
    spec = parse_range([value])
    if spec is not None:
        resolve_range(spec, length)


# -- If-Range (RFC 9110 section 13.1.5) ----------------------------------


@pytest.mark.parametrize(
    ("if_range", "holds"),
    [
        (None, True),
        ([], True),
        ([b'"v1"'], True),  # strong match
        ([b'"v2"'], False),
        ([b'W/"v1"'], False),  # a weak tag never matches strongly
        ([LAST_MODIFIED], True),  # the exact date
        ([b"sun, 06 nov 1994 08:49:37 gmt"], True),  # RFC 9111 section 4.2: case-insensitive
        ([b"Sunday, 06-Nov-94 08:49:37 GMT"], True),
        ([b"Sun, 06 Nov 1994 08:49:38 GMT"], False),  # a later date is not the date
        ([b"Sun, 06 Nov 1994 08:49:36 GMT"], False),
        ([b"not a date"], False),
        ([b'"v1"', b'"v1"'], False),  # several lines
        ([b""], False),
    ],
)
def test_rfc9110_13_1_5_if_range(if_range: list[bytes] | None, holds: bool) -> None:
    assert if_range_holds(if_range, ETAG, LAST_MODIFIED) is holds


def test_rfc9110_13_1_5_if_range_without_the_stored_validator_does_not_hold() -> None:
    assert not if_range_holds([b'"v1"'], None, LAST_MODIFIED)
    assert not if_range_holds([LAST_MODIFIED], ETAG, None)
    assert not if_range_holds([LAST_MODIFIED], ETAG, b"garbage")


def test_rfc9110_13_1_5_weak_stored_etag_never_matches() -> None:
    assert not if_range_holds([b'"v1"'], b'W/"v1"', None)


# -- the whole decision ----------------------------------------------------


def test_spec_3_one_range_on_a_stored_200_is_a_206() -> None:
    answer = range_answer(b"GET", 200, [b"bytes=0-3"], None, ETAG, LAST_MODIFIED, 10)
    assert answer == PartialAnswer(206, 0, 4, b"bytes 0-3/10")


def test_spec_3_unsatisfiable_range_is_a_416() -> None:
    answer = range_answer(b"GET", 200, [b"bytes=10-"], None, ETAG, LAST_MODIFIED, 10)
    assert answer == PartialAnswer(416, 0, 0, b"bytes */10")


@pytest.mark.parametrize(
    ("method", "status", "range_values", "if_range"),
    [
        (b"HEAD", 200, [b"bytes=0-3"], None),  # RFC 9110 section 14.2: only GET
        (b"GET", 203, [b"bytes=0-3"], None),  # SPEC.md section 3: a stored 200 only
        (b"GET", 404, [b"bytes=0-3"], None),
        (b"GET", 200, None, None),
        (b"GET", 200, [b"bytes=0-3,5-6"], None),  # several ranges
        (b"GET", 200, [b"bytes=0-3"], [b'"other"']),  # If-Range that does not hold
        (b"GET", 200, [b"bytes=0-3"], [b'W/"v1"']),
    ],
)
def test_spec_3_otherwise_the_whole_200(
    method: bytes, status: int, range_values: list[bytes] | None, if_range: list[bytes] | None
) -> None:
    assert range_answer(method, status, range_values, if_range, ETAG, LAST_MODIFIED, 10) is None


def test_rfc9110_13_1_5_if_range_is_ignored_without_range() -> None:
    assert range_answer(b"GET", 200, None, [b'"v1"'], ETAG, LAST_MODIFIED, 10) is None


def test_rfc9110_13_1_5_matching_if_range_lets_the_range_apply() -> None:
    assert range_answer(b"GET", 200, [b"bytes=-2"], [b'"v1"'], ETAG, None, 10) == PartialAnswer(
        206, 8, 10, b"bytes 8-9/10"
    )
    assert range_answer(b"GET", 200, [b"bytes=-2"], [LAST_MODIFIED], None, LAST_MODIFIED, 10) == PartialAnswer(
        206, 8, 10, b"bytes 8-9/10"
    )
