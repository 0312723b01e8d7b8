"""
Strict HTTP dates (RFC 9110 section 5.6.7) and delta-seconds (RFC 9111
section 1.2.2): L{apicache.cache.dates}.
"""

from __future__ import annotations

import calendar
import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from twisted.web.http import datetimeToString

from apicache.cache import dates
from apicache.cache.dates import (
    DELTA_SECONDS_MAX,
    first_delta_seconds,
    format_http_date,
    parse_delta_seconds,
    parse_http_date,
)
from apicache.testing import python_lines

DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
LONG_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
EPOCH = datetime(1970, 1, 1)

#: RFC 9110 section 5.6.7's example, in its three forms.
RFC_SECONDS = 784111777
IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
RFC850 = "Sunday, 06-Nov-94 08:49:37 GMT"
ASCTIME = "Sun Nov  6 08:49:37 1994"
#: 1 June 2025, the "now" against which two-digit years are read.
NOW = calendar.timegm((2025, 6, 1, 0, 0, 0))


def imf(dt: datetime) -> str:
    return f"{DAYS[dt.weekday()]}, {dt.day:02d} {MONTHS[dt.month - 1]} {dt.year:04d} {dt:%H:%M:%S} GMT"


def rfc850(dt: datetime) -> str:
    return f"{LONG_DAYS[dt.weekday()]}, {dt.day:02d}-{MONTHS[dt.month - 1]}-{dt.year % 100:02d} {dt:%H:%M:%S} GMT"


def asctime(dt: datetime) -> str:
    return f"{DAYS[dt.weekday()]} {MONTHS[dt.month - 1]} {dt.day:2d} {dt:%H:%M:%S} {dt.year:04d}"


def seconds(dt: datetime) -> int:
    return int((dt - EPOCH).total_seconds())


FORMS = {"imf": imf, "rfc850": rfc850, "asctime": asctime}
all_datetimes = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)).map(
    lambda d: d.replace(microsecond=0)
)
#: dates an RFC 850 two-digit year reads back exactly: within 49 years of NOW
near_datetimes = st.datetimes(min_value=datetime(1977, 1, 1), max_value=datetime(2074, 12, 31, 23, 59, 59)).map(
    lambda d: d.replace(microsecond=0)
)


# -- the three forms -----------------------------------------------------


@pytest.mark.parametrize("value", [IMF, RFC850, ASCTIME])
def test_rfc9110_5_6_7_example_in_each_form(value: str) -> None:
    """RFC 9110 section 5.6.7's three forms of one instant parse alike."""
    assert parse_http_date(value, NOW) == RFC_SECONDS
    assert parse_http_date(value.encode("ascii"), NOW) == RFC_SECONDS


@given(all_datetimes)
def test_rfc9110_5_6_7_imf_fixdate_round_trip(dt: datetime) -> None:
    """Every IMF-fixdate of years 1 to 9999 reads back as its instant."""
    assert parse_http_date(imf(dt)) == seconds(dt)


@given(all_datetimes)
def test_rfc9110_5_6_7_asctime_round_trip(dt: datetime) -> None:
    """Every asctime date (a one-digit day after two spaces) reads back."""
    assert parse_http_date(asctime(dt)) == seconds(dt)


@given(near_datetimes)
def test_rfc9110_5_6_7_rfc850_round_trip(dt: datetime) -> None:
    """Every RFC 850 date within 49 years of now reads back exactly."""
    assert parse_http_date(rfc850(dt), NOW) == seconds(dt)


@given(all_datetimes)
def test_format_http_date_is_imf_fixdate(dt: datetime) -> None:
    """L{format_http_date} writes the IMF-fixdate, which reads back."""
    formatted = format_http_date(seconds(dt))
    assert formatted == imf(dt).encode("ascii")
    assert parse_http_date(formatted) == seconds(dt)


@given(st.integers(min_value=0, max_value=2**34), st.floats(min_value=0, max_value=0.999))
def test_format_http_date_matches_twisted(whole: int, fraction: float) -> None:
    """The formatter writes what twisted.web's Date writer does (whole seconds)."""
    assert format_http_date(whole + fraction) == datetimeToString(whole)


def test_format_http_date_out_of_range() -> None:
    with pytest.raises(ValueError):
        format_http_date(-62135596801)  # 31 December of year 0
    with pytest.raises(ValueError):
        format_http_date(float("inf"))


@given(st.sampled_from(sorted(FORMS)), near_datetimes, st.randoms(use_true_random=False))
def test_rfc9111_4_2_dates_match_case_insensitively(form: str, dt: datetime, rnd: random.Random) -> None:
    """RFC 9111 section 4.2: a cache matches dates case-insensitively."""
    text = FORMS[form](dt)
    mixed = "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in text)
    assert parse_http_date(mixed, NOW) == seconds(dt)


def test_surrounding_whitespace_is_not_part_of_the_value() -> None:
    """RFC 9110 section 5.5: leading and trailing spaces and tabs are not the value."""
    assert parse_http_date(" \t" + IMF + "\t ") == RFC_SECONDS


# -- invalid -------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        # issue 20: all accepted by email.utils in version 2
        "Thu, 18 Aug 50 02:01:18 GMT",  # two-digit year in the IMF-fixdate form
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun 06 Nov 1994 08:49:37 GMT",  # missing comma
        "Sun,  06 Nov 1994 08:49:37 GMT",  # extra space
        "Sun, 06  Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994  08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",  # one-digit hour
        "Sun, 6 Nov 1994 08:49:37 GMT",  # one-digit day
        "Sun, 06-Nov-1994 08:49:37 GMT",  # dashes in the IMF-fixdate form
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sunday, 06 Nov 1994 08:49:37 GMT",  # long day name in IMF-fixdate
        "Sun, 06-Nov-94 08:49:37 GMT",  # short day name in RFC 850
        "Sunday, 06-Nov-1994 08:49:37 GMT",  # four-digit year in RFC 850
        "Sunday, 6-Nov-94 08:49:37 GMT",
        "Sunday 06-Nov-94 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",  # asctime with one space before a one-digit day
        "Sun Nov   6 08:49:37 1994",
        "Sun, Nov  6 08:49:37 1994",
        "Sun Nov  6 08:49:37 94",
        "Sun Nov  6 08:49:37 1994 GMT",
        "Sun, 06 November 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49 GMT",
        "Sun, 06 Nov 1994 08:49:37.5 GMT",
        "Sun, 06 Nov 1994 08.49.37 GMT",
        "Sun,\t06 Nov 1994 08:49:37 GMT",  # a tab where a space goes
        "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
        "1994-11-06T08:49:37Z",
        "784111777",
        "0",
        "-1",
        "",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        # values out of range
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Tue, 29 Feb 2100 00:00:00 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        # digits that are not ASCII
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT\x00",
    ],
)
def test_rfc9110_5_6_7_other_forms_are_invalid(value: str) -> None:
    assert parse_http_date(value, NOW) is None
    assert parse_http_date(value.encode("utf-8"), NOW) is None


def test_unicode_case_folding_does_not_apply() -> None:
    """Only ASCII letters fold: the Kelvin sign is not a k, nor a long s an s."""
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT".replace("S", "\u017f")) is None
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT".replace(b"S", b"\xc5\xbf")) is None


def test_none_is_absent() -> None:
    assert parse_http_date(None) is None


def test_leap_second_is_the_next_second() -> None:
    """RFC 9110 section 5.6.7: 23:59:60 (a leap second) is allowed."""
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == calendar.timegm((2017, 1, 1, 0, 0, 0))


def test_leap_day() -> None:
    assert parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT") == calendar.timegm((2000, 2, 29, 0, 0, 0))
    assert parse_http_date("Wed, 29 Feb 2023 00:00:00 GMT") is None


def test_day_name_is_not_checked_against_the_date() -> None:
    """RFC 9110 does not ask recipients to check the day name; any valid one is read."""
    assert parse_http_date("Mon, 06 Nov 1994 08:49:37 GMT") == RFC_SECONDS


def test_year_zero_and_before_1970() -> None:
    assert parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT") == 0
    assert parse_http_date("Wed, 31 Dec 1969 23:59:59 GMT") == -1
    assert parse_http_date("Sat, 01 Jan 0000 00:00:00 GMT") == seconds(datetime(1, 1, 1)) - 366 * 86400


def _mutations(text: str) -> list[str]:
    """Every single-character internal deletion and insertion of a space, comma, digit or letter."""
    found = []
    for i in range(len(text)):
        found.append(text[:i] + text[i + 1 :])
    for i in range(1, len(text)):
        for c in " ,0aG:-":
            found.append(text[:i] + c + text[i:])
    return found


@given(st.sampled_from(sorted(FORMS)), near_datetimes)
def test_rfc9110_5_6_7_mutated_forms_are_invalid(form: str, dt: datetime) -> None:
    """One character more (inside) or less turns any valid date invalid."""
    for mutated in _mutations(FORMS[form](dt)):
        assert parse_http_date(mutated, NOW) is None, mutated


@given(near_datetimes, st.sampled_from(["UTC", "UT", "+0000", "Z", "gmt+1", "EST"]))
def test_rfc9110_5_6_7_only_gmt(dt: datetime, zone: str) -> None:
    assert parse_http_date(imf(dt).replace("GMT", zone), NOW) is None
    assert parse_http_date(rfc850(dt).replace("GMT", zone), NOW) is None


@given(near_datetimes)
def test_rfc9110_5_6_7_two_digit_year_only_in_rfc850(dt: datetime) -> None:
    assert parse_http_date(imf(dt).replace(f" {dt.year:04d} ", f" {dt.year % 100:02d} "), NOW) is None


@given(st.one_of(st.text(), st.binary()))
@example(b"\xff" * 29)
@example("Sun, 99 Nov 9999 99:99:99 GMT")
@example("Sunday, 31-Feb-00 23:59:60 GMT")
def test_parse_http_date_never_raises(value: str | bytes) -> None:
    found = parse_http_date(value, NOW)
    assert found is None or isinstance(found, int)


# -- two-digit years (RFC 9110 section 5.6.7) ----------------------------


@pytest.mark.parametrize(
    ("value", "year"),
    [
        ("Thursday, 18-Aug-50 02:01:18 GMT", 2050),  # 25 years ahead: as it reads
        ("Monday, 01-Jan-75 00:00:00 GMT", 2075),  # 49.6 years ahead
        ("Sunday, 01-Dec-75 00:00:00 GMT", 1975),  # 50.5 years ahead: the past century
        ("Friday, 01-Jan-76 00:00:00 GMT", 1976),
        ("Wednesday, 01-Jan-25 00:00:00 GMT", 2025),
        ("Friday, 31-Dec-99 23:59:59 GMT", 1999),
        ("Saturday, 01-Jan-00 00:00:00 GMT", 2000),
    ],
)
def test_rfc9110_5_6_7_two_digit_year_more_than_50_years_ahead_is_in_the_past(value: str, year: int) -> None:
    found = parse_http_date(value, NOW)
    assert found is not None
    assert time.gmtime(found).tm_year == year


def test_rfc9110_5_6_7_two_digit_year_window_moves_with_now() -> None:
    """In 2090, "00" is 2100 (10 years ahead), not 2000."""
    in_2090 = calendar.timegm((2090, 1, 1, 0, 0, 0))
    found = parse_http_date("Friday, 01-Jan-00 00:00:00 GMT", in_2090)
    assert found is not None and time.gmtime(found).tm_year == 2100


@given(
    st.integers(min_value=1900, max_value=9000).map(lambda y: calendar.timegm((y, 6, 15, 12, 0, 0))),
    near_datetimes,
)
def test_rfc9110_5_6_7_rfc850_never_more_than_50_years_ahead(now: int, dt: datetime) -> None:
    """Whatever now is, an RFC 850 date reads as at most 50 years after it, and at most about 50 before."""
    found = parse_http_date(rfc850(dt), now)
    assume(found is not None)  # 29 February of a century that is not a leap year
    assert found is not None
    assert now - 51 * 366 * 86400 < found <= now + 50 * 31556952
    assert datetime(1970, 1, 1) + timedelta(seconds=found) == dt.replace(year=_same_year(found, dt))


def _same_year(found: int, dt: datetime) -> int:
    year = time.gmtime(found).tm_year
    assert year % 100 == dt.year % 100
    return year


def test_the_clock_is_read_only_for_rfc850(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without now, the system clock reads RFC 850 years; the other forms never need it."""

    def no_clock() -> float:
        raise AssertionError("clock read")

    monkeypatch.setattr(time, "time", no_clock)
    assert parse_http_date(IMF) == RFC_SECONDS
    assert parse_http_date(ASCTIME) == RFC_SECONDS
    with pytest.raises(AssertionError):
        parse_http_date(RFC850)


# -- delta-seconds (RFC 9111 section 1.2.2) ------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"0", 0),
        (b"60", 60),
        (b"0060", 60),
        (b"2147483647", 2147483647),
        (b"2147483648", 2147483648),
        (b"2147483649", DELTA_SECONDS_MAX),
        (b"99999999999999999999999", DELTA_SECONDS_MAX),
        (b"0" * 5000 + b"7", 7),
        ("3600", 3600),
    ],
)
def test_rfc9111_1_2_2_delta_seconds(value: bytes | str, expected: int) -> None:
    assert parse_delta_seconds(value) == expected


@pytest.mark.parametrize(
    "value",
    [None, b"", b" 5", b"5 ", b"+5", b"-5", b"5.0", b"1e3", b"0x10", b"5s", b"5,6", "\u0665", "\u00b2", b"\xd9\xa5"],
)
def test_rfc9111_1_2_2_delta_seconds_is_digits_only(value: bytes | str | None) -> None:
    assert parse_delta_seconds(value) is None


def test_rfc9111_1_2_2_no_number_however_long_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A million digits is 2^31, at once (int() would refuse more than 4300):
    a few lines of Python, never a loop over the digits, and no int() of
    more than 10 digits, counted rather than timed.
    """
    converted: list[int] = []
    monkeypatch.setattr(dates, "int", lambda digits: converted.append(len(digits)) or int(digits), raising=False)
    parsed, lines = python_lines(
        lambda: [parse_delta_seconds(b"9" * 1_000_000), parse_delta_seconds("1" + "0" * 1_000_000)]
    )
    assert parsed == [DELTA_SECONDS_MAX, DELTA_SECONDS_MAX]
    assert lines < 1000, lines
    assert max(converted, default=0) <= 10, converted


@given(st.integers(min_value=0, max_value=10**40))
def test_rfc9111_1_2_2_delta_seconds_round_trip(n: int) -> None:
    assert parse_delta_seconds(str(n).encode("ascii")) == min(n, DELTA_SECONDS_MAX)


@given(st.one_of(st.text(), st.binary()))
def test_parse_delta_seconds_never_raises(value: str | bytes) -> None:
    found = parse_delta_seconds(value)
    assert found is None or 0 <= found <= DELTA_SECONDS_MAX


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"7200, 0"], 7200),
        ([b"7200", b"0"], 7200),
        ([b"  7200 ,0"], 7200),
        ([b", 7200"], 7200),
        ([b"", b"15"], 15),
        ([b"abc, 5"], None),
        ([b"-1", b"5"], None),
        ([b"99999999999999"], DELTA_SECONDS_MAX),
        ([], None),
        (None, None),
        ([b""], None),
    ],
)
def test_age_with_several_values_counts_by_its_first(lines: list[bytes] | None, expected: int | None) -> None:
    """SPEC.md section 3 (v3): an Age list counts by its first member, ignored when not delta-seconds."""
    assert first_delta_seconds(lines) == expected


def test_now_defaults_to_the_system_clock() -> None:
    """RFC 850 dates read without now use the present year: 94 is 1994 today."""
    assert parse_http_date(RFC850) == RFC_SECONDS
    assert datetime.now(UTC).year < 2044  # the assertion above holds until then
