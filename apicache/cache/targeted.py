"""
Targeted Cache-Control fields (RFC 9213): C{CDN-Cache-Control} and its
kind, which a cache on their target list obeys in place of
C{Cache-Control} and C{Expires}.  A pure function of the answer's header
table and the configured target list
(C{upstream.targeted_cache_control}).

The fields are RFC 8941 Dictionaries, parsed with C{http-sfv} (by the
author of RFC 9213 and of the HTTP caching test suite): RFC 9213 section 2.1
warns that a Cache-Control parser in its place reads some invalid fields
as valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import http_sfv

__all__ = ["DEFAULT_TARGETS", "targeted_directives"]

#: RFC 9213 section 3: the field aimed at CDN caches, apicache's default
#: target list.
DEFAULT_TARGETS = ("cdn-cache-control",)


def _argument(member: object) -> tuple[bool, bytes | None]:
    """
    Return whether a dictionary member states its directive, and the
    directive's argument in the shape of L{apicache.cache.policy.cache_control}:
    C{None} for Boolean true (a directive without argument), the text of a
    String, Token or Integer.  Boolean false states nothing: the directive
    is absent.

    Other types (Decimal, Byte Sequence, Inner List, Date) violate every
    cache directive's inferred type (RFC 9213 section 2.1); their
    serialisation is passed on, which a directive's own parser then finds
    malformed (C{max-age=1.5} means already stale, as in C{Cache-Control}).
    Parameters are ignored (RFC 9213 section 2.1).
    """
    if isinstance(member, http_sfv.Item):
        value = member.value
        if value is True:
            return True, None
        if value is False:
            return False, None
        if isinstance(value, str) and not isinstance(value, http_sfv.DisplayString):
            # String and Token: the text itself, unquoted
            return True, value.encode("ascii")
        if isinstance(value, int):
            return True, b"%d" % value
        # serialised without parameters (str(member) would add them)
        return True, str(http_sfv.Item(value)).encode("ascii")
    return True, str(member).encode("ascii")


def _parse(lines: Sequence[bytes]) -> dict[bytes, bytes | None] | None:
    """
    Return the directives of one targeted field given as its field lines,
    or C{None} when it is not a valid non-empty RFC 8941 Dictionary.
    """
    # RFC 8941 section 4.2: the lines are combined with commas first; an
    # empty line holds no member
    combined = b", ".join(line for line in lines if line.strip(b" \t"))
    if not combined:
        return None
    field = http_sfv.Dictionary()
    try:
        field.parse(combined)
        items = list(field.items())
    except Exception:
        # whatever the parser raises, the field is invalid: ignored
        return None
    if not items:
        return None
    directives: dict[bytes, bytes | None] = {}
    for key, member in items:
        try:
            stated, argument = _argument(member)
        except Exception:
            # a member that can't be written back as text is ignored
            continue
        if stated:
            directives[key.encode("ascii")] = argument
    return directives


def targeted_directives(
    headers: Sequence[tuple[bytes, bytes]], targets: Iterable[str | bytes] = DEFAULT_TARGETS
) -> dict[bytes, bytes | None] | None:
    """
    Return the directives of the first field of C{targets} that the answer
    carries with a valid, non-empty value (RFC 9213 section 2.2), or
    C{None} when none does: then C{Cache-Control} and C{Expires} apply as
    usual.  When a dictionary is returned, it replaces C{Cache-Control}
    and C{Expires} for storing and freshness alike; it may be empty when
    every member was Boolean false, and still wins.

    @param headers: the answer's header table, names in lower case.
    @param targets: the target list in priority order (field names, any
        case); C{[]} disables targeted fields.
    @return: lower-case directive names mapped to their argument (C{None}
        for one without), the shape of
        L{apicache.cache.policy.cache_control}.  Never raises.
    """
    for target in targets:
        name = (target.encode("ascii") if isinstance(target, str) else target).lower()
        lines = [value for field, value in headers if field == name]
        if lines:
            directives = _parse(lines)
            if directives is not None:
                return directives
    return None
