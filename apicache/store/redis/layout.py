"""
Where the keys of a resource live on a Redis Cluster: in one of L{BUCKETS}
buckets, each pinned to a hash slot by a hash tag, so that every key one Lua
script touches hashes to one slot (SPEC.md section 7).

A bucket is a key prefix, ``P:{<tag>}``, that takes the place of the store's
``P`` in every name of L{apicache.store.redis.codec} and
L{apicache.store.redis.scripts}: a resource's entries, lock, tag records and
index sets, and the bucket's own copies of the generations that span
resources (``P:{b}:A``, ``P:{b}:T:<tenant>``, ``P:{b}:G:<route>:<params>``),
of the tag generations and sets (``P:{b}:x:``, ``X``, ``y``, ``Y``, ``z``,
``Z``), of the tag sequence ``P:{b}:seq`` and of ``P:{b}:L``.  The scripts
run unchanged on a bucket; what spans buckets runs once per bucket (see
L{apicache.store.redis.scaled}).

Bucket tags are spread evenly over the slots: tag C{b} hashes to a slot in
C{[b * 16384 / BUCKETS, (b + 1) * 16384 / BUCKETS)}, so a primary serving a
contiguous range of slots serves the buckets of that range.  A tenant is
striped over L{STRIPE} buckets, C{BUCKETS / STRIPE} apart: a large tenant
spreads over that many slots, and what is tenant-wide (its clear, its tag
purges) runs in those buckets only.

L{SingleLayout} is the same interface for one primary (Sentinel mode): one
bucket, the prefix itself, and the single-node key names unchanged.
"""

from __future__ import annotations

import binascii
import zlib
from collections import defaultdict
from collections.abc import Iterable

from apicache.cache.keys import CacheKey
from apicache.store.redis.codec import encode_component, route_name

__all__ = [
    "BUCKETS",
    "STRIPE",
    "SLOTS",
    "BUCKET_TAGS",
    "key_slot",
    "bucket_of",
    "tenant_buckets",
    "BucketLayout",
    "SingleLayout",
]

#: Hash slots of a Redis Cluster.
SLOTS = 16384
#: Buckets: the unit of data placement; what spans every tenant runs once
#: per bucket.  256: a cluster of up to a few dozen primaries gets B/N ± 1
#: buckets each (within about 4 % of even at 10 primaries), and a purge of
#: every tenant costs 256 small scripts (measured in docs/capacity.md).
BUCKETS = 256
#: Buckets one tenant is striped over.
STRIPE = 8


def key_slot(key: str | bytes) -> int:
    """
    Return the hash slot of ``key``, as Redis Cluster computes it (CRC16
    XMODEM of the hash tag, or of the whole key, mod 16384).
    """
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % SLOTS


def _bucket_tags() -> tuple[str, ...]:
    # The first base-36 numeral falling in each bucket's range of slots:
    # about BUCKETS * ln(BUCKETS) tries, computed once at import.
    width = SLOTS // BUCKETS
    tags: list[str | None] = [None] * BUCKETS
    left = BUCKETS
    i = 0
    while left:
        tag = _base36(i)
        b = key_slot(tag) // width
        if tags[b] is None:
            tags[b] = tag
            left -= 1
        i += 1
    return tuple(t for t in tags if t is not None)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


#: The hash tag of each bucket (alphanumeric, no braces).
BUCKET_TAGS: tuple[str, ...] = _bucket_tags()


def _hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def bucket_of(tenant: str, route: str, params: tuple[str, ...]) -> int:
    """
    Return the bucket of a tenant's resource: one of the tenant's
    L{STRIPE} buckets, chosen by the resource.
    """
    return (_hash(tenant) + (_hash(route_name(route, params)) % STRIPE) * (BUCKETS // STRIPE)) % BUCKETS


def tenant_buckets(tenant: str) -> list[int]:
    """
    Return the L{STRIPE} buckets a tenant's resources live in.
    """
    first = _hash(tenant)
    return [(first + i * (BUCKETS // STRIPE)) % BUCKETS for i in range(STRIPE)]


class BucketLayout:
    """
    The key prefixes of a store on Redis Cluster (see the module docstring).

    @param prefix: the store's C{key_prefix}; it must hold no brace (a
        brace would make Redis hash on the wrong part of the key).
    @raise ValueError: C{prefix} holds C{{} or C{}}.
    """

    fan_out = True

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("key_prefix may not hold { or } in cluster mode")
        self.prefix = prefix
        self.buckets = [f"{prefix}:{{{tag}}}" for tag in BUCKET_TAGS]
        self._tag_start = len(prefix) + 2

    def at(self, key: CacheKey) -> str:
        """
        Return the prefix of ``key``'s bucket.
        """
        return self.buckets[bucket_of(key.tenant, key.route, key.params)]

    def resource(self, tenant: str, route: str, params: tuple[str, ...]) -> str:
        """
        Return the prefix of the bucket of a tenant's resource.
        """
        return self.buckets[bucket_of(tenant, route, params)]

    def every(self) -> list[str]:
        """
        Return every bucket's prefix.
        """
        return list(self.buckets)

    def of_tenant(self, tenant: str) -> list[str]:
        """
        Return the prefixes of the buckets ``tenant``'s resources live in.
        """
        return [self.buckets[b] for b in tenant_buckets(tenant)]

    def clear_pattern(self, tenant: str | None) -> str:
        """
        Return the SCAN pattern of what a clear deletes (of ``tenant``): as
        on one node, in every bucket (the tag is alphanumeric and every
        other component percent-encoded, so C{{*}} matches the tag only).
        """
        if tenant is None:
            return f"{self.prefix}:{{*}}:[ertlnzZpv]:*"
        return f"{self.prefix}:{{*}}:[erlnzv]:{encode_component(tenant)}:*"

    def sweep_pattern(self) -> str:
        """
        Return the SCAN pattern of the tag sets the background sweep trims.
        """
        return f"{self.prefix}:{{*}}:[zZ]:*"

    def is_entry(self, key: bytes) -> bool:
        """
        Return whether ``key`` (as SCAN returns it) names an entry.
        """
        end = key.find(b"}", self._tag_start)
        return end > 0 and key[end + 1 : end + 4] == b":e:"

    def by_bucket(self, keys: Iterable[bytes]) -> list[list[bytes]]:
        """
        Return ``keys`` grouped by their hash tag (one slot per group).
        """
        groups: dict[bytes, list[bytes]] = defaultdict(list)
        for k in keys:
            end = k.find(b"}", self._tag_start)
            groups[k[self._tag_start : end]].append(k)
        return list(groups.values())


class SingleLayout:
    """
    The key prefixes on one primary (Sentinel mode): the single-node names
    of L{apicache.store.redis.codec}, one "bucket".
    """

    fan_out = False

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._entry = f"{prefix}:e:".encode()

    def at(self, key: CacheKey) -> str:
        return self.prefix

    def resource(self, tenant: str, route: str, params: tuple[str, ...]) -> str:
        return self.prefix

    def every(self) -> list[str]:
        return [self.prefix]

    def of_tenant(self, tenant: str) -> list[str]:
        return [self.prefix]

    def clear_pattern(self, tenant: str | None) -> str:
        if tenant is None:
            return f"{self.prefix}:[ertlnzZpv]:*"
        return f"{self.prefix}:[erlnzv]:{encode_component(tenant)}:*"

    def sweep_pattern(self) -> str:
        return f"{self.prefix}:[zZ]:*"

    def is_entry(self, key: bytes) -> bool:
        return key.startswith(self._entry)

    def by_bucket(self, keys: Iterable[bytes]) -> list[list[bytes]]:
        found = list(keys)
        return [found] if found else []
