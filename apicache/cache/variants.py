"""
Variants of one cache key (RFC 9111 section 4.1, SPEC.md section 3): pure
functions that read an answer's C{Vary}, reduce a request to the selector
of the variant it may be served, and keep a key's variants in
least-recently-used order within C{max_variants}.

A variant is described by a L{Variant}: the header names its answer varies
on (its C{Vary}, plus C{accept-encoding} for a gzip answer), the selector
of the request that fetched it, and its date.  A request is served a
stored variant when its own selector for that variant's names is the
same.  Selectors are 16-byte digests: fixed size in memory and in Redis
whatever the header values (an C{Authorization} that a C{Vary} names is
never written to the store as it is).

The normalised C{Accept-Encoding} (C{gzip} or C{identity}, the value sent
upstream) selects like a C{Vary} field instead of keying (SPEC.md section
3, v3): an identity answer without C{accept-encoding} in its C{Vary}
serves gzip and identity callers alike; a gzip answer only callers that
admit gzip.  Where a C{Vary} names C{accept-encoding}, the normalised
value is what is compared, since it is all the upstream ever saw.

Weak and strong entity-tag comparison (RFC 9110 section 8.8.3.2) and
whether a 304 confirms a stored answer (RFC 9111 section 4.3.4) are not
here: they are L{apicache.cache.policy.weak_etag_match},
L{apicache.cache.policy.strong_etag_match} and
L{apicache.cache.policy.revalidation_matches}, applied to the one variant a
revalidation was sent for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import NamedTuple

__all__ = [
    "CASE_INSENSITIVE",
    "NO_VARY_SELECTOR",
    "Variant",
    "ValuesOf",
    "parse_vary",
    "effective_vary",
    "normalise_field",
    "selector",
    "answer_variant",
    "matches",
    "pick_variant",
    "touch_variant",
    "admit_variant",
]

#: A sorted tuple of distinct lower-case field names.
Vary = tuple[bytes, ...]
#: Reads a request's field lines by lower-case name: C{None} (or an empty
#: sequence) when the request has none; e.g. a Twisted request's
#: C{requestHeaders.getRawHeaders}.
ValuesOf = Callable[[bytes], "Sequence[bytes] | None"]

#: SPEC.md section 3: fields whose values are compared case-insensitively;
#: every other field is compared byte for byte.
CASE_INSENSITIVE = frozenset({b"accept", b"accept-charset", b"accept-encoding", b"accept-language"})
_ACCEPT_ENCODING = b"accept-encoding"
_OWS = b" \t"
#: whitespace around a comma (SPEC.md section 3: removed)
_AROUND_COMMA = re.compile(rb"[ \t]*,[ \t]*")


class Variant(NamedTuple):
    """
    One stored variant of a key.

    @ivar vary: the names it varies on (L{effective_vary}).
    @ivar selector: the L{selector} of the request that fetched it; it
        also identifies the variant among its key's (its storage slot).
    @ivar date: the POSIX time of its answer's C{Date} (or when it was
        stored): of several variants a request matches, the most recent
        is served (RFC 9111 section 4.1).
    """

    vary: Vary
    selector: bytes
    date: float


def parse_vary(values: Sequence[bytes] | None) -> Vary | None:
    """
    Return the field names an answer's C{Vary} lines name (RFC 9110
    section 12.5.5), lower case, sorted and without repeats: C{()} without
    C{Vary}, and C{None} when it holds C{*}: such an answer is never stored.
    """
    names: set[bytes] = set()
    for line in values or ():
        for name in line.split(b","):
            name = name.strip(_OWS).lower()
            if name == b"*":
                return None
            # RFC 9110 section 5.6.1: empty list members are not members
            if name:
                names.add(name)
    return tuple(sorted(names))


def effective_vary(vary: Vary, content_encoding: bytes | None) -> Vary:
    """
    Return the names a stored answer varies on: its C{Vary}, plus
    C{accept-encoding} when it is content-coded (a gzip answer serves only
    callers that admit gzip, SPEC.md section 3).

    @param content_encoding: the answer's C{Content-Encoding} value, or
        C{None} without one.
    """
    coding = (content_encoding or b"").strip(_OWS).lower()
    if coding in (b"", b"identity") or _ACCEPT_ENCODING in vary:
        return vary
    return tuple(sorted((*vary, _ACCEPT_ENCODING)))


def normalise_field(name: bytes, values: Sequence[bytes] | None) -> bytes | None:
    """
    Return a request field's value as variants compare it (SPEC.md
    section 3), or C{None} when the request lacks the field (absent
    differs from every value, the empty one included): its lines joined
    with C{,}, whitespace around commas and at both ends removed, and
    lower-cased for the C{accept*} fields of L{CASE_INSENSITIVE}.

    @param name: the field name, lower case.
    """
    if values is None or len(values) == 0:
        return None
    value = _AROUND_COMMA.sub(b",", b",".join(values)).strip(_OWS)
    if name in CASE_INSENSITIVE:
        value = value.lower()
    return value


def _digest(encoded: bytes) -> bytes:
    return blake2b(encoded, digest_size=16).digest()


#: The selector of an answer that varies on nothing: every request has it.
NO_VARY_SELECTOR = _digest(b"")


def selector(vary: Vary, values_of: ValuesOf, accept_encoding: bytes) -> bytes:
    """
    Return the 16-byte selector of a request for the names C{vary}: two
    requests have the same selector exactly when their normalised values
    (L{normalise_field}) for these names are the same (barring a 128-bit
    BLAKE2b collision).  Distinct name lists give distinct selectors.

    @param vary: sorted lower-case names (L{parse_vary}, L{effective_vary}).
    @param values_of: the request's field lines by lower-case name.
    @param accept_encoding: the request's normalised C{Accept-Encoding}
        (C{gzip} or C{identity}), used for C{accept-encoding}.
    """
    if not vary:
        return NO_VARY_SELECTOR
    parts = []
    for name in vary:
        value = accept_encoding if name == _ACCEPT_ENCODING else normalise_field(name, values_of(name))
        # length-prefixed, so that no name or value can be read as two
        parts.append(b"%d:%s" % (len(name), name))
        parts.append(b"-" if value is None else b"%d=%s" % (len(value), value))
    return _digest(b"".join(parts))


def answer_variant(
    headers: Sequence[tuple[bytes, bytes]], values_of: ValuesOf, accept_encoding: bytes, date: float
) -> Variant | None:
    """
    Return the L{Variant} an upstream answer is stored as, from its
    header table and the request that fetched it, or C{None} when its
    C{Vary} holds C{*} (never stored, SPEC.md section 3).

    @param headers: the answer's header table, names in lower case.
    @param values_of: the fetching request's field lines by lower-case name.
    @param accept_encoding: the normalised C{Accept-Encoding} sent upstream.
    @param date: the answer's date (see L{Variant.date}).
    """
    vary_lines = [v for k, v in headers if k == b"vary"]
    vary = parse_vary(vary_lines)
    if vary is None:
        return None
    codings = [v for k, v in headers if k == b"content-encoding"]
    vary = effective_vary(vary, b",".join(codings) if codings else None)
    return Variant(vary, selector(vary, values_of, accept_encoding), date)


def matches(variant: Variant, values_of: ValuesOf, accept_encoding: bytes) -> bool:
    """
    Return whether a request may be served C{variant}: its selector for
    the variant's names is the variant's.  Coalesced waiters share a
    leader's answer only when this holds for them (SPEC.md section 3).
    """
    return selector(variant.vary, values_of, accept_encoding) == variant.selector


def pick_variant(variants: Sequence[Variant], values_of: ValuesOf, accept_encoding: bytes) -> int | None:
    """
    Return the index in C{variants} of the variant a request is served,
    or C{None} when it matches none (a C{vary-miss}).  Of several matches
    the most recent by L{Variant.date} wins (RFC 9111 section 4.1), and of
    those the first in C{variants} (most recently used first).

    Each distinct name list is reduced to a selector once: a key whose
    variants all vary on the same names costs one digest.
    """
    found: int | None = None
    found_date = 0.0
    selectors: dict[Vary, bytes] = {}
    for index, variant in enumerate(variants):
        wanted = selectors.get(variant.vary)
        if wanted is None:
            wanted = selectors[variant.vary] = selector(variant.vary, values_of, accept_encoding)
        if wanted == variant.selector and (found is None or variant.date > found_date):
            found, found_date = index, variant.date
    return found


def touch_variant(variants: Sequence[Variant], index: int) -> tuple[Variant, ...]:
    """
    Return C{variants} with the one at C{index} moved first (most recently
    used), after it was served.
    """
    if index == 0:
        return tuple(variants)
    return (variants[index], *variants[:index], *variants[index + 1 :])


def admit_variant(
    variants: Sequence[Variant], new: Variant, max_variants: int
) -> tuple[tuple[Variant, ...], tuple[Variant, ...]]:
    """
    Return a key's variants once C{new} is stored, and the variants that
    go to make room.

    C{new} comes first (most recently used).  A stored variant with its
    selector is replaced in place (same names, same values: the same
    storage slot, so it is not among those that go).  Past C{max_variants}
    (at least 1) the least recently used go, from the end of C{variants}.

    @param variants: the key's variants, most recently used first.
    @return: C{(kept, dropped)}, both most recently used first.
    """
    rest = [v for v in variants if v.selector != new.selector]
    room = max(1, max_variants) - 1
    return (new, *rest[:room]), tuple(rest[room:])
