"""
What the Redis store writes: the names of its keys and the bytes of its values.

Layout under ``key_prefix`` (``P``), every component percent-encoded so that
no value can contain the ``:`` and ``,`` separators (see :func:`encode_key`)::

    P:e:<tenant>:<route>:<params>:<variant>   an entry (binary, see encode_entry)
    P:r:<tenant>:<route>:<params>             set: the entry keys of a resource
    P:t:<route>:<params>                      set: the P:r: keys of every tenant
    P:g:<tenant>:<route>:<params>             generation of a resource
    P:G:<route>:<params>                      generation of a resource, every tenant
    P:T:<tenant>                              generation of a tenant
    P:A                                       generation of everything
    P:l:<tenant>:<route>:<params>:<variant>   coalescing lock (instance id)
    P:v:<tenant>:<route>:<params>:<variant>   (v3) the variants of a key (see encode_variants)
    P:inv                                     pub/sub channel of invalidations

A key whose answers vary (RFC 9111 section 4.1) holds no ``P:e:`` entry of
its own: its variants are entries under the keys
L{apicache.cache.keys.variant_key} makes (the key's ``<variant>`` followed
by L{VARIANT_SUFFIX} and the selector in hex), listed in its ``P:v:`` key,
which is in the resource set with them so that every invalidation drops it.

and the tag keys (``P:n:``, ``P:z:``, ``P:Z:``, ``P:x:``/``P:X:``,
``P:y:``/``P:Y:``, ``P:p:``, ``P:seq``, ``P:L``) described in
L{apicache.store.redis.scripts}.
"""

from __future__ import annotations

import re
import struct
from urllib.parse import quote, unquote

from apicache.cache.keys import VARIANT_MARK, CacheKey
from apicache.cache.variants import Variant
from apicache.cache.wire import header_block
from apicache.store.interface import CachedResponse, CachedVariant, Variants

__all__ = [
    "FORMAT_VERSION",
    "VARIANT_FORMAT_VERSION",
    "VARIANT_SUFFIX",
    "STALE_OFFSET",
    "encode_key",
    "encode_entry",
    "decode_entry",
    "entry_problem",
    "encode_component",
    "resource_name",
    "route_name",
    "generation_keys",
    "lock_key",
    "tag_record_key",
    "encode_tag_record",
    "decode_tag_record",
    "variants_key",
    "encode_variant_record",
    "decode_variants",
]

#: The first byte of every stored value; a value of another version is a miss.
FORMAT_VERSION = 3
#: (v3) The first byte of a stored variant (L{CachedResponse.variant} set):
#: the same format with the variant after the times.  Entries that serve
#: every request keep L{FORMAT_VERSION}, so that those stored before
#: variants existed are still read, and an older instance reads a variant
#: as a miss.
VARIANT_FORMAT_VERSION = 4
#: Offset of the stale flag in a stored value (set in place by the change script).
STALE_OFFSET = 1
# version, stale, status, stored_at, expires_at, stale_until, swr_until,
# keep_until, sent_at, no_cache, header count
_HEAD = struct.Struct("!BBHddddddBH")
_HEADER = struct.Struct("!HI")
# a variant's selector, date and the length of its names (joined by ",")
_VARIANT = struct.Struct("!16sdH")


def encode_component(value: str) -> str:
    """
    Return ``value`` percent-encoded: only ``A-Z a-z 0-9 _ . - ~`` stay as
    they are, so never ``:``, ``,`` nor a SCAN pattern character
    (``*``, ``?``, ``[``).
    """
    return quote(value, safe="")


def _encode_params(params: tuple[str, ...]) -> str:
    # the count first, so () and ("",) differ
    return f"{len(params)}," + ",".join(encode_component(p) for p in params)


def route_name(route: str, params: tuple[str, ...]) -> str:
    """
    Return the ``<route>:<params>`` part of a key: a resource, every tenant.
    """
    return f"{encode_component(route)}:{_encode_params(params)}"


def resource_name(tenant: str, route: str, params: tuple[str, ...]) -> str:
    """
    Return the ``<tenant>:<route>:<params>`` part of a key: one tenant's resource.
    """
    return f"{encode_component(tenant)}:{route_name(route, params)}"


def encode_key(prefix: str, key: CacheKey) -> str:
    """
    Return the Redis key of an entry.  Distinct keys give distinct strings,
    and a tenant's keys all start with that tenant's own namespace.
    """
    return f"{prefix}:e:{resource_name(key.tenant, key.route, key.params)}:{encode_component(key.variant)}"


def generation_keys(prefix: str, key: CacheKey) -> list[str]:
    """
    Return the four generation keys that cover ``key``: its resource for its
    tenant, its resource for every tenant, its tenant, everything.
    """
    return [
        f"{prefix}:g:{resource_name(key.tenant, key.route, key.params)}",
        f"{prefix}:G:{route_name(key.route, key.params)}",
        f"{prefix}:T:{encode_component(key.tenant)}",
        f"{prefix}:A",
    ]


def lock_key(prefix: str, key: CacheKey) -> str:
    """
    Return the key of the coalescing lock of ``key``.
    """
    return f"{prefix}:l:{resource_name(key.tenant, key.route, key.params)}:{encode_component(key.variant)}"


def encode_entry(entry: CachedResponse) -> bytes:
    """
    Return ``entry`` in the stored format: a version byte, the stale flag,
    status, times (the upstream request's sending last), the no-cache
    flag, the header count, (v3, a variant's) its selector, date and
    names, the headers, then the body.  The headers'
    wire form (``head``) is not stored: it is rebuilt when loaded.
    """
    variant = entry.variant
    parts = [
        _HEAD.pack(
            FORMAT_VERSION if variant is None else VARIANT_FORMAT_VERSION,
            1 if entry.stale else 0,
            entry.status,
            entry.stored_at,
            entry.expires_at,
            entry.stale_until,
            entry.swr_until,
            entry.keep_until,
            entry.sent_at,
            1 if entry.no_cache else 0,
            len(entry.headers),
        )
    ]
    if variant is not None:
        names = b",".join(variant.vary)
        parts.append(_VARIANT.pack(variant.selector, variant.date, len(names)))
        parts.append(names)
    for name, value in entry.headers:
        parts.append(_HEADER.pack(len(name), len(value)))
        parts.append(name)
        parts.append(value)
    parts.append(entry.body)
    return b"".join(parts)


def decode_entry(data: bytes) -> CachedResponse | None:
    """
    Return the entry stored as ``data``, or ``None`` if it is of another
    format version or damaged.
    """
    if len(data) < _HEAD.size or data[0] not in (FORMAT_VERSION, VARIANT_FORMAT_VERSION):
        return None
    try:
        _, stale, status, stored_at, expires_at, stale_until, swr_until, keep_until, sent_at, no_cache, n = (
            _HEAD.unpack_from(data)
        )
        pos = _HEAD.size
        variant = None
        if data[0] == VARIANT_FORMAT_VERSION:
            selector, date, ln = _VARIANT.unpack_from(data, pos)
            pos += _VARIANT.size
            variant = _variant(selector, date, data[pos : pos + ln])
            pos += ln
            if variant is None:
                return None
        headers = []
        for _ in range(n):
            ln, lv = _HEADER.unpack_from(data, pos)
            pos += _HEADER.size
            name = data[pos : pos + ln]
            pos += ln
            value = data[pos : pos + lv]
            pos += lv
            headers.append((name, value))
        if pos > len(data):
            return None
    except (struct.error, ValueError, TypeError, UnicodeError):
        return None
    fields = dict(
        stored_at=stored_at,
        expires_at=expires_at,
        stale_until=stale_until,
        stale=bool(stale),
        swr_until=swr_until,
        keep_until=keep_until,
        no_cache=bool(no_cache),
        sent_at=sent_at,
    )
    entry = (
        CachedResponse(status, tuple(headers), data[pos:], **fields)
        if variant is None
        else CachedVariant(status, tuple(headers), data[pos:], variant=variant, **fields)
    )
    # the wire form is rebuilt once per load, not stored twice in Redis; an
    # entry that fails L{entry_problem} is never written, so it gets none
    if entry_problem(entry) is None:
        entry.head = header_block(entry.headers)
    return entry


# RFC 9110 section 5.6.2: a field name is a token
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# a variant's names as stored: lower-case tokens (never a "," nor a space)
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")


def _variant(selector: bytes, date: float, names: bytes) -> Variant | None:
    """
    Return the L{Variant} read from a stored value or list, or ``None`` if
    its names are not lower-case field names, sorted, without repeats (what
    L{apicache.cache.variants.parse_vary} makes), or there are none.
    """
    vary = tuple(names.split(b","))
    if not all(_NAME.fullmatch(n) for n in vary) or list(vary) != sorted(set(vary)) or len(selector) != 16:
        return None
    return Variant(vary, selector, date)
_UNSAFE_VALUE = re.compile(rb"[\r\n\x00]")
#: Fields never stored (SPEC.md section 3, "Replayed headers"): the
#: hop-by-hop ones, the framing apicache writes itself, cookies, and
#: apicache's own; replayed from a stored value they would change how a
#: client reads the answer, or what it keeps.  (The same list as the cache
#: core's filter, kept here so that the store checks what it reads without
#: importing the layer above it.)
_NEVER_STORED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"set-cookie",
        b"age",
        b"alt-svc",
        b"x-cache",
    }
)
#: Statuses never stored: interim answers and out-of-range ones are not
#: final answers, a 206 is answered from a stored 200, and a 304 updates
#: an entry rather than being one (SPEC.md section 3, "Storable").
_STORED_STATUSES = frozenset(range(200, 600)) - {206, 304}
#: Statuses whose answers have no content (RFC 9110 sections 15.3.5, 15.4.5).
_NO_CONTENT = frozenset({204, 304})


def entry_problem(entry: CachedResponse) -> str | None:
    """
    Check an entry read from Redis before it is used: Redis is shared, so
    what it holds is not trusted to be what this code wrote.  An entry that
    apicache would not have stored as it is is refused (SPEC.md section 3,
    "Stored values are untrusted").

    @return: ``None`` when the entry may be replayed, else why not: a status
        apicache does not store (1xx, 206, 304, outside 200-599), a body on
        a 204, a field never stored (hop-by-hop, framing, ``set-cookie``,
        apicache's own), a header name that is not a token, a header value
        holding CR, LF or NUL.
    """
    status = entry.status
    if status not in _STORED_STATUSES:
        return f"status {status} is never stored" if 100 <= status <= 599 else "status outside 100-599"
    if status in _NO_CONTENT and entry.body:
        return f"a body on a {status}"
    for name, value in entry.headers:
        if not _TOKEN.fullmatch(name):
            return "a header name that is not a token"
        if name.lower() in _NEVER_STORED:
            # ours, from the list above: safe to log
            return f"a {name.lower().decode('ascii')} field, never stored"
        if _UNSAFE_VALUE.search(value):
            return "a header value holding CR, LF or NUL"
    return None


def tag_record_key(prefix: str, key: CacheKey) -> str:
    """
    Return the key of the tag record of ``key``'s entry.
    """
    return f"{prefix}:n:{resource_name(key.tenant, key.route, key.params)}:{encode_component(key.variant)}"


def encode_tag_record(seq: int, tags: tuple[str, ...]) -> list[str]:
    """
    Return the script arguments that make a tag record: the sequence, then
    each tag encoded (never a space: the record is split on them).
    """
    return [str(seq), *(encode_component(t) for t in tags)]


def decode_tag_record(record: bytes | None) -> tuple[str, ...] | None:
    """
    Return the tags of a tag record (``b"<seq> <tag> ..."``), ``()`` for
    none, or ``None`` when the record is damaged (Redis is shared: what it
    holds is checked like an entry, see L{entry_problem}).
    """
    if not record:
        return ()
    try:
        seq, *tags = record.decode("ascii").split()
        int(seq)
        return tuple(unquote(t, errors="strict") for t in tags)
    except (UnicodeError, ValueError):
        return None


#: What L{apicache.cache.keys.VARIANT_MARK} becomes in a Redis key: a
#: variant's keys are its key's followed by this and the selector in hex
#: (the scripts build them so).
VARIANT_SUFFIX = encode_component(VARIANT_MARK)


def variants_key(prefix: str, key: CacheKey) -> str:
    """
    Return the key of the list of ``key``'s variants (L{decode_variants}).
    """
    return f"{prefix}:v:{resource_name(key.tenant, key.route, key.params)}:{encode_component(key.variant)}"


def encode_variant_record(variant: Variant) -> str:
    """
    Return the line of a variants list for ``variant``: its selector in hex
    (32 characters, first: the scripts compare them), its date, its names
    joined by ``,``.
    """
    return f"{variant.selector.hex()} {variant.date!r} {b','.join(variant.vary).decode('ascii')}"


def decode_variants(data: bytes) -> Variants | None:
    """
    Return the variants a list holds, most recently used first, or
    ``None`` when it is damaged or empty.  A list is ``V``, one byte the scripts
    ignore (the change script sets byte 1 of every value of a resource
    when it marks it stale), then a line per variant, each after a
    newline (L{encode_variant_record}).
    """
    if data[:1] != b"V":
        return None
    found: list[Variant] = []
    try:
        for line in data[2:].split(b"\n")[1:]:
            selector, date, names = line.split(b" ")
            variant = _variant(bytes.fromhex(selector.decode("ascii")), float(date), names)
            if variant is None or len(selector) != 32:
                return None
            found.append(variant)
    except (ValueError, UnicodeError):
        return None
    # the scripts never write an empty list
    return tuple(found) or None
