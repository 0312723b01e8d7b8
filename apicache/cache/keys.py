"""
Cache keys and the rules for what goes into them (SPEC.md section 3): tenant
names, path parameters, the canonical query string, the keyed headers, and
L{cache_key}, which puts them together.

A leaf module: it imports nothing of the project's but the configuration's
L{RouteConfig}.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from urllib.parse import quote, unquote_plus, unquote_to_bytes

from apicache.config import RouteConfig

__all__ = [
    "CacheKey",
    "InvalidTenant",
    "InvalidParameter",
    "InvalidQuery",
    "MAX_PARAM_BYTES",
    "MAX_QUERY_BYTES",
    "validate_tenant",
    "decode_parameter",
    "encode_parameter",
    "canonical_query",
    "variant",
    "header_value",
    "cache_key",
    "VARIANT_MARK",
    "variant_key",
    "base_key",
]

MAX_PARAM_BYTES = 512
MAX_QUERY_BYTES = 2048
MAX_TENANT_BYTES = 128

# matched with fullmatch: "$" alone would accept a trailing newline
_TENANT_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# C0 controls, DEL and C1 controls
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ESCAPE_RE = re.compile(r"%[0-9A-Fa-f]{2}")


class InvalidTenant(ValueError):
    """The tenant header's value is not a tenant name."""


class InvalidParameter(ValueError):
    """A path parameter is rejected by SPEC.md section 3."""


class InvalidQuery(ValueError):
    """The query string is too long or not decodable."""


class CacheKey(NamedTuple):
    """
    Where one cached answer lives.

    ``(tenant, route, params)`` names a resource: invalidation works on that
    and drops every ``variant`` (query and keyed header values, plus the
    route's fingerprint) under it.  A key made by L{variant_key} names one
    of the variants stored under a key whose answers carry C{Vary}
    (RFC 9111 section 4.1); it is of the same resource.
    """

    tenant: str
    route: str
    params: tuple[str, ...]
    variant: str

    def size(self) -> int:
        """
        Return the number of bytes the key's strings hold (for budgets).
        """
        # str.isascii() is cheap and holds for almost every key
        return sum(
            len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))
            for s in (self.tenant, self.route, *self.params, self.variant)
        )


def validate_tenant(value: str) -> str:
    """
    Return ``value`` if it is a valid tenant name.

    @raise InvalidTenant: empty, over 128 bytes, or outside ``[A-Za-z0-9._:-]``.
    """
    if not _TENANT_RE.fullmatch(value):
        if not value:
            raise InvalidTenant("the tenant is empty")
        if len(value.encode("utf-8", "surrogateescape")) > MAX_TENANT_BYTES:
            raise InvalidTenant("the tenant is longer than 128 bytes")
        raise InvalidTenant("the tenant may only hold A-Z a-z 0-9 . _ : -")
    return value


def _forbidden(value: str) -> str | None:
    if value == ".":
        # a dot-segment: a normalising upstream would drop it (RFC 3986 5.2.4)
        return "is '.'"
    if "/" in value:
        return "holds '/'"
    if "\\" in value:
        return "holds '\\'"
    if ".." in value:
        return "holds '..'"
    if _CONTROL_RE.search(value):
        return "holds a control character"
    return None


def decode_parameter(name: str, raw: str | bytes) -> str:
    """
    Percent-decode a path parameter once and check it.

    @param raw: the parameter as it appeared in the request path, still
        percent-encoded (``str`` or ``bytes``).
    @return: the decoded value.
    @raise InvalidParameter: empty, over 512 bytes, not UTF-8, ``.``, or
        holding ``/``, ``\\``, ``..`` or a control character, directly or
        behind a second level of percent-encoding.
    """
    try:
        decoded_bytes = unquote_to_bytes(raw)
        value = decoded_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParameter(f"parameter {name!r} is not UTF-8") from None
    if not value:
        raise InvalidParameter(f"parameter {name!r} is empty")
    if len(decoded_bytes) > MAX_PARAM_BYTES:
        raise InvalidParameter(f"parameter {name!r} is longer than {MAX_PARAM_BYTES} bytes")
    why = _forbidden(value)
    if why is None and _ESCAPE_RE.search(value):
        # double encoding: what a second decoder would make of it
        twice = unquote_to_bytes(value).decode("utf-8", "replace")
        why = _forbidden(twice)
        if why is not None:
            why += " once decoded again"
    if why is not None:
        raise InvalidParameter(f"parameter {name!r} {why}")
    return value


def encode_parameter(value: str) -> str:
    """
    Return ``value`` percent-encoded for a URL path with every reserved
    character escaped.
    """
    return quote(value, safe="")


def canonical_query(raw: bytes) -> str:
    """
    Return the canonical form of a query string: parameters sorted by name
    (stable for repeated names), names and values re-encoded.

    @raise InvalidQuery: over 2048 bytes or not decodable as UTF-8.
    """
    if not raw:
        return ""
    if len(raw) > MAX_QUERY_BYTES:
        raise InvalidQuery(f"the query string is longer than {MAX_QUERY_BYTES} bytes")
    try:
        text = raw.decode("ascii")
        # as parse_qsl(keep_blank_values=True) reads it, but a parameter
        # without "=" stays so (v3: ?flag and ?flag= are different queries,
        # each forwarded as it came)
        pairs = [
            (unquote_plus(name, errors="strict"), eq, unquote_plus(value, errors="strict"))
            for name, eq, value in (part.partition("=") for part in text.split("&") if part)
        ]
    except (UnicodeDecodeError, ValueError):
        raise InvalidQuery("the query string is not decodable") from None
    if any(_CONTROL_RE.search(k) or _CONTROL_RE.search(v) for k, _, v in pairs):
        raise InvalidQuery("the query string holds a control character")
    pairs.sort(key=lambda p: p[0])
    return "&".join(f"{quote(k, safe='')}{eq}{quote(v, safe='')}" for k, eq, v in pairs)


def variant(fingerprint: str, query: str, header_values: Iterable[str | None]) -> str:
    """
    Return the part of a key that tells variants of one resource apart:
    the route fingerprint, the canonical query and the keyed header values.
    Distinct inputs give distinct strings: an absent header (``None``) and
    a header with any value, whatever characters it holds, differ.
    """
    # Fields are joined with "\x00".  An absent header is "-" and a present
    # one "=" followed by its value with "\\" and "\x00" escaped, so that no
    # value (not even "\x01", the absent marker of old, or one holding the
    # separator) can be read as another field list.
    return "\x00".join(
        [fingerprint, query, *("-" if v is None else "=" + _escape_field(v) for v in header_values)]
    )


def _escape_field(value: str) -> str:
    if "\\" in value or "\x00" in value:
        return value.replace("\\", "\\\\").replace("\x00", "\\0")
    return value


def header_value(values: Sequence[bytes] | None) -> str | None:
    """
    Return a request header's values joined as one string (latin-1), or
    ``None`` if it is absent.
    """
    if not values:
        return None
    return ", ".join(v.decode("latin-1") for v in values)


def cache_key(
    tenant: str,
    route: RouteConfig,
    params: tuple[str, ...],
    query: str,
    keyed_values: Sequence[Sequence[bytes] | None],
) -> CacheKey:
    """
    Return the cache key of a request: its tenant, route, decoded path
    parameters, canonical query and the raw values of the keyed headers
    (``None`` for an absent one).

    The normalised ``Accept-Encoding`` is not part of it (SPEC.md section
    3, v3): it selects among a key's variants like a C{Vary} field
    (L{apicache.cache.variants}), so that an identity answer serves gzip
    and identity callers alike.
    """
    # interned: keys of one route without a query or keyed headers share
    # one variant string (memory per entry)
    return CacheKey(
        tenant,
        route.type,
        params,
        sys.intern(variant(route.fingerprint, query, [header_value(v) for v in keyed_values])),
    )


#: Separates a key's variant string from the selector of one of its
#: variants (L{variant_key}).  No string L{variant} returns holds it: its
#: fields are joined with NUL, and each field after the first starts with
#: what a canonical query starts with (percent-encoded, so never C{!}),
#: C{=} or C{-}; a NUL inside a header value is escaped.
VARIANT_MARK = "\x00!"


def variant_key(key: CacheKey, selector: bytes) -> CacheKey:
    """
    Return the key under which the variant of ``key`` with ``selector``
    (L{apicache.cache.variants.selector}) is stored: same tenant, route
    and parameters (so every invalidation of the resource covers it), the
    selector in hex after L{VARIANT_MARK}.

    @param key: a key made by L{cache_key} (not itself a variant's).
    """
    return CacheKey(key.tenant, key.route, key.params, key.variant + VARIANT_MARK + selector.hex())


def base_key(key: CacheKey) -> CacheKey:
    """
    Return the key a variant's key (L{variant_key}) was made from, or
    ``key`` itself when it is not a variant's.
    """
    base, mark, _ = key.variant.partition(VARIANT_MARK)
    if not mark:
        return key
    return CacheKey(key.tenant, key.route, key.params, base)
