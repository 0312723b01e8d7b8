"""
Targeted Cache-Control fields (RFC 9213): L{apicache.cache.targeted}.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apicache.cache.targeted import DEFAULT_TARGETS, targeted_directives

CDN = b"cdn-cache-control"


def test_rfc9213_2_2_cdn_cache_control_is_the_default_target() -> None:
    assert DEFAULT_TARGETS == ("cdn-cache-control",)
    headers = [(b"cache-control", b"no-store"), (CDN, b"max-age=600")]
    assert targeted_directives(headers) == {b"max-age": b"600"}


def test_rfc9213_2_2_without_a_targeted_field_cache_control_applies() -> None:
    assert targeted_directives([(b"cache-control", b"max-age=60")]) is None
    assert targeted_directives([]) is None


def test_rfc9213_2_2_an_empty_target_list_disables_targeted_fields() -> None:
    assert targeted_directives([(CDN, b"max-age=600")], []) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"max-age=600", {b"max-age": b"600"}),
        (b"no-store", {b"no-store": None}),
        (b"none", {b"none": None}),  # RFC 9213 section 3.1's example: valid, non-empty
        (b"max-age=60, must-revalidate", {b"max-age": b"60", b"must-revalidate": None}),
        (b'no-cache="set-cookie, x-foo"', {b"no-cache": b"set-cookie, x-foo"}),
        (b"private=x-token", {b"private": b"x-token"}),
        (b"s-maxage=10, stale-while-revalidate=30", {b"s-maxage": b"10", b"stale-while-revalidate": b"30"}),
        (b"max-age=60;foo=bar, public;x", {b"max-age": b"60", b"public": None}),  # parameters ignored
        (b"no-store=?0, max-age=5", {b"max-age": b"5"}),  # Boolean false: absent
        (b"max-age=?1", {b"max-age": None}),
        (b"max-age=1.5", {b"max-age": b"1.5"}),  # Decimal: passed on, a malformed max-age
        (b"max-age=-5", {b"max-age": b"-5"}),
        (b"max-age=(1 2)", {b"max-age": b"(1 2)"}),
        (b"max-age=:AQI=:", {b"max-age": b":AQI=:"}),
        (b"max-age=60, max-age=5", {b"max-age": b"5"}),  # RFC 8941 section 4.2.2: the last wins
        (b"max-age=60 ,\tno-cache", {b"max-age": b"60", b"no-cache": None}),
        (b" max-age=60 ", {b"max-age": b"60"}),
    ],
)
def test_rfc9213_2_1_directives_of_a_valid_dictionary(value: bytes, expected: dict[bytes, bytes | None]) -> None:
    """RFC 9213 section 2.1: members are cache directives; parameters are ignored."""
    assert targeted_directives([(CDN, value)]) == expected


def test_rfc9213_2_1_all_members_false_is_still_a_valid_non_empty_field() -> None:
    """A dictionary of Boolean false members is valid and non-empty: it wins, stating nothing."""
    assert targeted_directives([(b"cache-control", b"no-store"), (CDN, b"no-store=?0")]) == {}


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"   ",
        b"Max-Age=60",  # RFC 8941 keys are lower case
        b"max-age=60,",  # trailing comma
        b"max-age=60, &&&&&",
        b"max-age=60 no-store",
        b"max-age=",
        b"=60",
        b'no-cache="unterminated',
        b"max-age=60;",
        b"max-age=\xff",
        b"max-age=60, , no-store",
        b"max_age=9999999999999999",  # an Integer over 15 digits
        b"max-age='60'",
    ],
)
def test_rfc9213_2_1_invalid_or_empty_field_is_ignored(value: bytes) -> None:
    """RFC 9213 section 2.1: an empty field, or one that does not parse, is as if absent."""
    assert targeted_directives([(CDN, value)]) is None
    assert targeted_directives([(CDN, value), (b"x-cache-control", b"max-age=7")], [CDN, b"x-cache-control"]) == {
        b"max-age": b"7"
    }


def test_rfc8941_4_2_several_lines_are_combined() -> None:
    headers = [(CDN, b"max-age=60"), (b"vary", b"accept"), (CDN, b"must-revalidate")]
    assert targeted_directives(headers) == {b"max-age": b"60", b"must-revalidate": None}


def test_rfc8941_4_2_an_invalid_line_invalidates_the_field() -> None:
    assert targeted_directives([(CDN, b"max-age=60"), (CDN, b"???")]) is None


def test_empty_lines_hold_no_member() -> None:
    assert targeted_directives([(CDN, b""), (CDN, b"max-age=60")]) == {b"max-age": b"60"}


def test_rfc9213_2_2_the_first_listed_field_with_a_valid_value_wins() -> None:
    targets = ["examplecdn-cache-control", "cdn-cache-control"]
    both = [(CDN, b"max-age=600"), (b"examplecdn-cache-control", b"max-age=60")]
    assert targeted_directives(both, targets) == {b"max-age": b"60"}
    # list order decides, not the order of the answer's headers
    assert targeted_directives(both, list(reversed(targets))) == {b"max-age": b"600"}
    invalid_first = [(CDN, b"max-age=600"), (b"examplecdn-cache-control", b"Max-Age=60")]
    assert targeted_directives(invalid_first, targets) == {b"max-age": b"600"}
    empty_first = [(CDN, b"max-age=600"), (b"examplecdn-cache-control", b"")]
    assert targeted_directives(empty_first, targets) == {b"max-age": b"600"}


def test_rfc9213_2_2_fields_not_listed_change_nothing() -> None:
    assert targeted_directives([(b"examplecdn-cache-control", b"max-age=60")]) is None


def test_target_names_are_matched_case_insensitively() -> None:
    assert targeted_directives([(CDN, b"max-age=9")], ["CDN-Cache-Control"]) == {b"max-age": b"9"}
    assert targeted_directives([(CDN, b"max-age=9")], [b"CDN-Cache-Control"]) == {b"max-age": b"9"}


directive_names = st.sampled_from(
    [b"max-age", b"s-maxage", b"no-store", b"no-cache", b"private", b"public", b"must-revalidate", b"x-ext"]
)
arguments = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=10**15 - 1).map(lambda n: b"%d" % n),
    st.from_regex(rb"\A[a-z][a-z0-9-]{0,10}\Z"),
)


@given(st.dictionaries(directive_names, arguments, min_size=1))
def test_rfc9213_2_1_written_directives_read_back(directives: dict[bytes, bytes | None]) -> None:
    """A dictionary written as RFC 9213 section 2.1 maps directives reads back as those directives."""
    value = b", ".join(
        name
        if arg is None
        else name + b"=" + (arg if arg.isdigit() else b'"' + arg + b'"' if arg[:1].isdigit() else arg)
        for name, arg in directives.items()
    )
    assert targeted_directives([(CDN, value)]) == directives


@given(st.lists(st.tuples(st.sampled_from([CDN, b"cache-control", b"x"]), st.binary(max_size=60)), max_size=4))
def test_targeted_directives_never_raises(headers: list[tuple[bytes, bytes]]) -> None:
    found = targeted_directives(headers)
    assert found is None or all(isinstance(k, bytes) for k in found)


@given(st.text(max_size=60))
def test_targeted_directives_never_raises_on_text_turned_bytes(value: str) -> None:
    targeted_directives([(CDN, value.encode("utf-8"))])
