"""
Variants of one key (RFC 9111 section 4.1, SPEC.md section 3):
L{apicache.cache.variants}.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apicache.cache.variants import (
    NO_VARY_SELECTOR,
    ValuesOf,
    Variant,
    admit_variant,
    answer_variant,
    effective_vary,
    matches,
    normalise_field,
    parse_vary,
    pick_variant,
    selector,
    touch_variant,
)

GZIP, IDENTITY = b"gzip", b"identity"


def request(**fields: str | list[str]) -> ValuesOf:
    """A request's field lines, as C{getRawHeaders} gives them (names lower case, C{_} for C{-})."""
    table: dict[bytes, list[bytes]] = {}
    for name, value in fields.items():
        lines = value if isinstance(value, list) else [value]
        table[name.replace("_", "-").encode("ascii")] = [v.encode("latin-1") for v in lines]

    def values_of(name: bytes) -> Sequence[bytes] | None:
        return table.get(name)

    return values_of


# -- Vary ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (None, ()),
        ([], ()),
        ([b""], ()),
        ([b"Accept-Language"], (b"accept-language",)),
        ([b"accept-language, Accept"], (b"accept", b"accept-language")),
        ([b"Accept", b"Accept-Language"], (b"accept", b"accept-language")),  # several lines
        ([b"ACCEPT, accept ,Accept"], (b"accept",)),
        ([b" , foo,,bar ,"], (b"bar", b"foo")),
        ([b"Authorization"], (b"authorization",)),
    ],
)
def test_rfc9110_12_5_5_vary_names(lines: list[bytes] | None, expected: tuple[bytes, ...]) -> None:
    assert parse_vary(lines) == expected


@pytest.mark.parametrize("lines", [[b"*"], [b"accept, *"], [b"accept", b" * "]])
def test_rfc9111_4_1_vary_star_is_never_stored(lines: list[bytes]) -> None:
    assert parse_vary(lines) is None
    assert answer_variant([(b"vary", line) for line in lines], request(), IDENTITY, 0.0) is None


# -- normalised values ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "lines", "expected"),
    [
        (b"accept-language", [" en ,   de"], b"en,de"),
        (b"accept-language", ["en, de"], b"en,de"),
        (b"accept-language", ["en", "de"], b"en,de"),  # lines combined
        (b"accept-language", ["EN-us, De"], b"en-us,de"),
        (b"accept", ["Application/JSON"], b"application/json"),
        (b"accept-charset", ["UTF-8"], b"utf-8"),
        (b"accept-encoding", ["GZIP"], b"gzip"),
        (b"x-tenant-flavour", ["Blue , Green"], b"Blue,Green"),  # byte for byte, but for spaces
        (b"authorization", ["Bearer AbC"], b"Bearer AbC"),
        (b"x-a", ["\ta\t,\tb\t"], b"a,b"),
        (b"x-a", [""], b""),
    ],
)
def test_spec_3_normalised_values(name: bytes, lines: list[str], expected: bytes) -> None:
    assert normalise_field(name, [v.encode("latin-1") for v in lines]) == expected


def test_spec_3_absent_differs_from_every_value() -> None:
    assert normalise_field(b"x-a", None) is None
    assert normalise_field(b"x-a", []) is None
    assert selector((b"x-a",), request(), IDENTITY) != selector((b"x-a",), request(x_a=""), IDENTITY)
    assert selector((b"x-a",), request(), IDENTITY) != selector((b"x-a",), request(x_a="-"), IDENTITY)


def test_rfc9111_4_1_whitespace_and_case_variations_select_the_same_variant() -> None:
    vary = (b"accept-language",)
    assert selector(vary, request(accept_language=" en ,   DE"), IDENTITY) == selector(
        vary, request(accept_language=["en", "de"]), IDENTITY
    )


def test_spec_3_only_accept_fields_compare_case_insensitively() -> None:
    vary = (b"authorization",)
    assert selector(vary, request(authorization="Bearer a"), IDENTITY) != selector(
        vary, request(authorization="bearer a"), IDENTITY
    )


def test_spec_3_vary_on_authorization_is_one_variant_per_token() -> None:
    vary = parse_vary([b"Authorization"])
    assert vary is not None
    one = selector(vary, request(authorization="Bearer one"), IDENTITY)
    assert one == selector(vary, request(authorization="Bearer one"), IDENTITY)
    assert one != selector(vary, request(authorization="Bearer two"), IDENTITY)
    assert b"one" not in one  # a digest, never the token


def test_selectors_are_16_bytes_and_name_lists_never_collide() -> None:
    values = request(a="x", b="x")
    assert len(selector((b"a",), values, IDENTITY)) == 16
    assert selector((b"a",), values, IDENTITY) != selector((b"b",), values, IDENTITY)
    assert selector((), values, IDENTITY) == NO_VARY_SELECTOR


def test_values_cannot_be_shifted_between_names() -> None:
    """Length-prefixed: (a="1:b", b absent) is not (a="1", b=...)."""
    vary = (b"a", b"b")
    assert selector(vary, request(a="x=b", b="y"), IDENTITY) != selector(vary, request(a="x", b="b=y"), IDENTITY)
    assert selector(vary, request(a="1:b-"), IDENTITY) != selector(vary, request(a="1"), IDENTITY)


lines = st.lists(st.text(alphabet=" \t,aAbB-=;", max_size=8), max_size=3)


@given(st.sampled_from([b"accept", b"x-a", b"authorization"]), st.none() | lines, st.none() | lines)
def test_rfc9111_4_1_same_selector_exactly_when_same_normalised_value(
    name: bytes, a: list[str] | None, b: list[str] | None
) -> None:
    ra = request(**({name.decode().replace("-", "_"): a} if a is not None else {}))
    rb = request(**({name.decode().replace("-", "_"): b} if b is not None else {}))
    same_value = normalise_field(name, ra(name)) == normalise_field(name, rb(name))
    assert (selector((name,), ra, IDENTITY) == selector((name,), rb, IDENTITY)) == same_value


# -- Accept-Encoding as a selector (SPEC.md section 3, v3) ---------------


def test_spec_3_identity_answer_without_vary_serves_gzip_and_identity_callers() -> None:
    variant = answer_variant([(b"content-type", b"application/json")], request(), GZIP, 1.0)
    assert variant is not None
    assert variant.vary == ()
    assert matches(variant, request(), IDENTITY)
    assert matches(variant, request(accept_encoding="gzip"), GZIP)


def test_spec_3_explicit_identity_coding_is_no_coding() -> None:
    variant = answer_variant([(b"content-encoding", b"Identity")], request(), GZIP, 1.0)
    assert variant is not None and variant.vary == ()


def test_spec_3_gzip_answer_serves_only_callers_that_admit_gzip() -> None:
    variant = answer_variant([(b"content-encoding", b"gzip")], request(accept_encoding="gzip"), GZIP, 1.0)
    assert variant is not None
    assert variant.vary == (b"accept-encoding",)
    assert matches(variant, request(accept_encoding="gzip, br"), GZIP)
    assert not matches(variant, request(), IDENTITY)


def test_spec_3_vary_accept_encoding_compares_the_normalised_value() -> None:
    """The upstream saw only the normalised value: "gzip, br" and "GZIP" are one variant."""
    variant = answer_variant([(b"vary", b"Accept-Encoding")], request(accept_encoding="gzip, br"), GZIP, 1.0)
    assert variant is not None
    assert matches(variant, request(accept_encoding="GZIP"), GZIP)
    assert not matches(variant, request(accept_encoding="br"), IDENTITY)


def test_effective_vary_adds_accept_encoding_once() -> None:
    assert effective_vary((b"accept",), b"gzip") == (b"accept", b"accept-encoding")
    assert effective_vary((b"accept-encoding",), b"gzip") == (b"accept-encoding",)
    assert effective_vary((b"accept",), None) == (b"accept",)
    assert effective_vary((b"zzz",), b" GZIP ") == (b"accept-encoding", b"zzz")


# -- picking and keeping variants ----------------------------------------


def variant_for(vary: tuple[bytes, ...], values: ValuesOf, date: float, encoding: bytes = IDENTITY) -> Variant:
    return Variant(vary, selector(vary, values, encoding), date)


def test_rfc9111_4_1_request_matching_no_variant_is_a_vary_miss() -> None:
    vary = (b"accept-language",)
    stored = [variant_for(vary, request(accept_language="en"), 1.0)]
    assert pick_variant(stored, request(accept_language="de"), IDENTITY) is None
    assert pick_variant(stored, request(), IDENTITY) is None
    assert pick_variant([], request(), IDENTITY) is None
    assert pick_variant(stored, request(accept_language="EN"), IDENTITY) == 0


def test_rfc9111_4_1_picks_the_variant_whose_values_match() -> None:
    vary = (b"accept-language",)
    stored = [variant_for(vary, request(accept_language=lang), 1.0) for lang in ("en", "de", "fr")]
    assert pick_variant(stored, request(accept_language="de"), IDENTITY) == 1
    assert pick_variant(stored, request(accept_language="fr"), IDENTITY) == 2


def test_rfc9111_4_1_of_several_matches_the_most_recent_wins() -> None:
    """An answer without Vary (newer) and one with Vary both match: the newer Date is served."""
    older = variant_for((b"accept-language",), request(accept_language="en"), 100.0)
    newer = variant_for((), request(), 200.0)
    assert pick_variant([older, newer], request(accept_language="en"), IDENTITY) == 1
    assert pick_variant([newer, older], request(accept_language="en"), IDENTITY) == 0
    # equal dates: most recently used (first) wins
    same = variant_for((b"accept-language",), request(accept_language="en"), 200.0)
    assert pick_variant([same, newer], request(accept_language="en"), IDENTITY) == 0


def test_one_digest_per_distinct_name_list() -> None:
    calls: list[bytes] = []
    base = request(accept_language="en")

    def counting(name: bytes) -> Sequence[bytes] | None:
        calls.append(name)
        return base(name)

    vary = (b"accept-language",)
    stored = [variant_for(vary, request(accept_language=str(i)), 1.0) for i in range(16)]
    pick_variant(stored, counting, IDENTITY)
    assert calls == [b"accept-language"]


def test_touch_moves_a_variant_first() -> None:
    a, b, c = (Variant((b"x",), bytes([i]) * 16, 0.0) for i in range(3))
    assert touch_variant([a, b, c], 2) == (c, a, b)
    assert touch_variant([a, b, c], 0) == (a, b, c)
    assert touch_variant([a, b, c], 1) == (b, a, c)


def test_spec_3_past_max_variants_the_least_recently_used_goes() -> None:
    a, b, c = (Variant((b"x",), bytes([i]) * 16, 0.0) for i in range(3))
    new = Variant((b"x",), b"\x09" * 16, 1.0)
    assert admit_variant([a, b, c], new, 3) == ((new, a, b), (c,))
    assert admit_variant([a, b, c], new, 16) == ((new, a, b, c), ())
    assert admit_variant([a, b, c], new, 1) == ((new,), (a, b, c))
    assert admit_variant([], new, 0) == ((new,), ())


def test_a_variant_with_the_same_selector_is_replaced_in_place() -> None:
    a, b = (Variant((b"x",), bytes([i]) * 16, 0.0) for i in range(2))
    fresher = b._replace(date=5.0)
    kept, dropped = admit_variant([a, b], fresher, 2)
    assert kept == (fresher, a)
    assert dropped == ()


@given(
    st.lists(st.binary(min_size=1, max_size=2), unique=True, max_size=20),
    st.binary(min_size=1, max_size=2),
    st.integers(min_value=1, max_value=20),
)
def test_spec_3_admit_keeps_at_most_max_variants(selectors: list[bytes], new_selector: bytes, limit: int) -> None:
    stored = [Variant((b"x",), s, 0.0) for s in selectors][:limit]
    new = Variant((b"x",), new_selector, 1.0)
    kept, dropped = admit_variant(stored, new, limit)
    assert kept[0] == new
    assert len(kept) <= limit
    assert len({v.selector for v in kept}) == len(kept)
    # nothing lost but the replaced one: every old variant is kept or dropped
    assert {v.selector for v in kept} | {v.selector for v in dropped} == set(selectors[:limit]) | {new_selector}
    assert not {v.selector for v in kept} & {v.selector for v in dropped}


def test_coalesced_waiters_share_only_a_matching_variant() -> None:
    """SPEC.md section 3: a waiter shares the leader's answer only when its values select that variant."""
    leader = request(accept_language="en", authorization="Bearer a")
    answer = [(b"vary", b"Accept-Language")]
    variant = answer_variant(answer, leader, IDENTITY, 0.0)
    assert variant is not None
    assert matches(variant, request(accept_language=" EN", authorization="Bearer b"), IDENTITY)
    assert not matches(variant, request(accept_language="de", authorization="Bearer a"), IDENTITY)
