"""
HTTP dates and delta-seconds, strictly (RFC 9110 section 5.6.7, RFC 9111
section 1.2.2): pure functions, no clock unless one is passed.

A date is accepted in the three forms RFC 9110 defines and in no other:

    IMF-fixdate   Sun, 06 Nov 1994 08:49:37 GMT
    rfc850-date   Sunday, 06-Nov-94 08:49:37 GMT      (obsolete)
    asctime-date  Sun Nov  6 08:49:37 1994            (obsolete)

matched case-insensitively (RFC 9111 section 4.2: a cache matches dates
case-insensitively although the grammar is case-sensitive).  Anything else
is invalid: a two-digit year outside the RFC 850 form, ``UTC`` or ``+0000``
for ``GMT``, a missing comma, a doubled space, a one-digit hour, a day the
month does not have.  L{email.utils}, which version 2 used, accepts all of
these and reads ``Thu, 18 Aug 50 02:01:18 GMT`` as 2050.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

__all__ = [
    "DELTA_SECONDS_MAX",
    "parse_http_date",
    "format_http_date",
    "parse_delta_seconds",
    "first_delta_seconds",
]

#: RFC 9111 section 1.2.2: a delta-seconds value too large to hold is
#: taken as 2^31.
DELTA_SECONDS_MAX = 2147483648

_MONTHS = {
    b"jan": 1,
    b"feb": 2,
    b"mar": 3,
    b"apr": 4,
    b"may": 5,
    b"jun": 6,
    b"jul": 7,
    b"aug": 8,
    b"sep": 9,
    b"oct": 10,
    b"nov": 11,
    b"dec": 12,
}
_DAY_NAMES = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTH_NAMES = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")

# Bytes patterns: IGNORECASE then folds ASCII letters only, and [0-9] is
# ASCII whatever the flags (a str pattern would let "\u212a" match "k").
_DAY = rb"(?:mon|tue|wed|thu|fri|sat|sun)"
_DAY_L = rb"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTH = rb"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_TIME = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_FIXDATE = re.compile(_DAY + rb", ([0-9]{2}) " + _MONTH + rb" ([0-9]{4}) " + _TIME + rb" gmt", re.IGNORECASE)
_RFC850 = re.compile(_DAY_L + rb", ([0-9]{2})-" + _MONTH + rb"-([0-9]{2}) " + _TIME + rb" gmt", re.IGNORECASE)
_ASCTIME = re.compile(_DAY + rb" " + _MONTH + rb" ([0-9]{2}| [0-9]) " + _TIME + rb" ([0-9]{4})", re.IGNORECASE)
_DIGITS = re.compile(rb"[0-9]+")
#: RFC 9110 section 5.5: a field value has no leading or trailing
#: whitespace (space and horizontal tab).
_OWS = b" \t"
#: The average Gregorian year, for "more than 50 years in the future".
_YEAR_SECONDS = 31556952


def _days_from_civil(year: int, month: int, day: int) -> int:
    """
    Return the days from 1970-01-01 to a date of the proleptic Gregorian
    calendar (any year, without L{datetime}'s range).
    """
    # Howard Hinnant's days_from_civil: years counted from March, so that
    # the leap day ends a year
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _seconds(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int | None:
    """
    Return the POSIX time of a broken-down UTC time, or C{None} when the
    day is not in the month or the time of day is out of range (RFC 9110
    section 5.6.7: 00:00:00 to 23:59:60, the last a leap second).
    """
    if not 1 <= day <= _days_in_month(year, month) or hour > 23 or minute > 59 or second > 60:
        return None
    return ((_days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60 + second


def _two_digit_year(yy: int, day: int, month: int, now: float) -> int:
    """
    Return the full year of an RFC 850 date (RFC 9110 section 5.6.7): a
    timestamp that appears to be more than 50 years in the future is in
    the most recent past year with the same last two digits.  So the year
    is the latest one ending in C{yy} whose date is at most 50 years after
    C{now}.
    """
    this_year = time.gmtime(now).tm_year
    # the latest year ending in yy no later than 51 years from now ...
    year = this_year + 51 - (this_year + 51 - yy) % 100
    # ... unless its date is more than 50 years ahead (a valid day of the
    # month in some year: 29 February is judged on 28 February)
    when = _days_from_civil(year, month, min(day, 28)) * 86400
    if when > now + 50 * _YEAR_SECONDS:
        year -= 100
    return year


def parse_http_date(value: bytes | str | None, now: float | None = None) -> int | None:
    """
    Return an HTTP-date (RFC 9110 section 5.6.7) as whole seconds since the
    epoch (negative before 1970), or C{None} when absent or invalid.  Never
    raises, whatever C{value} holds.

    @param value: a field value: bytes as received (or text); leading and
        trailing spaces and tabs are ignored (RFC 9110 section 5.5).
    @param now: the POSIX time against which the two-digit year of an RFC
        850 date is read; C{None}: the system clock, read only for that
        form.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            return None
    value = value.strip(_OWS)
    # the three forms have 24 to 33 characters: nothing longer is looked at
    if not 24 <= len(value) <= 33:
        return None
    m = _IMF_FIXDATE.fullmatch(value)
    if m is not None:
        day, month, year, hour, minute, second = m.groups()
        return _seconds(int(year), _MONTHS[month.lower()], int(day), int(hour), int(minute), int(second))
    m = _RFC850.fullmatch(value)
    if m is not None:
        day, month, yy, hour, minute, second = m.groups()
        month_number = _MONTHS[month.lower()]
        year = _two_digit_year(int(yy), int(day), month_number, time.time() if now is None else now)
        return _seconds(year, month_number, int(day), int(hour), int(minute), int(second))
    m = _ASCTIME.fullmatch(value)
    if m is not None:
        month, day, hour, minute, second, year = m.groups()
        return _seconds(int(year), _MONTHS[month.lower()], int(day), int(hour), int(minute), int(second))
    return None


def format_http_date(when: float) -> bytes:
    """
    Return the IMF-fixdate of C{when} (RFC 9110 section 5.6.7), to the
    whole second below, for example C{Sun, 06 Nov 1994 08:49:37 GMT}.

    @param when: a POSIX time in the years 1 to 9999.
    @raise ValueError: C{when} is outside those years.
    """
    try:
        t = time.gmtime(int(when // 1))
    except (OverflowError, OSError) as e:
        raise ValueError(f"no HTTP-date for {when!r}") from e
    if not 1 <= t.tm_year <= 9999:
        raise ValueError(f"no HTTP-date for {when!r}")
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAY_NAMES[t.tm_wday],
        t.tm_mday,
        _MONTH_NAMES[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


def parse_delta_seconds(value: bytes | str | None) -> int | None:
    """
    Return a delta-seconds value (RFC 9111 section 1.2.2: one or more ASCII
    digits, nothing else), or C{None} when absent or malformed.  A value
    above 2^31 is 2^31 (L{DELTA_SECONDS_MAX}): no number, however long,
    raises or costs more than a scan of its digits.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            return None
    if _DIGITS.fullmatch(value) is None:
        return None
    # int() refuses more than 4300 digits (CVE-2020-10735): only the
    # significant digits are converted, and only when few enough to matter
    significant = value.lstrip(b"0")
    if len(significant) > 10:
        return DELTA_SECONDS_MAX
    return min(int(significant or b"0"), DELTA_SECONDS_MAX)


def first_delta_seconds(values: Sequence[bytes] | None) -> int | None:
    """
    Return the first member of a list-valued delta-seconds field given as
    its field lines (SPEC.md section 3 for C{Age}: "7200, 0" and two lines
    "7200" and "0" both count as 7200), or C{None} when there is none or it
    is not delta-seconds (the field is then ignored).
    """
    for line in values or ():
        for member in line.split(b","):
            member = member.strip(_OWS)
            # RFC 9110 section 5.6.1: empty list members are not members
            if member:
                return parse_delta_seconds(member)
    return None
