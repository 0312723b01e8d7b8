"""
Tags (surrogate keys, SPEC.md section 3): which tags an entry carries, and
the checks a tag must pass.

An entry's tags are its route's ``tags`` templates filled with its path
parameters, plus the values of ``upstream.tags_header`` in its answer, split
on spaces and commas.  An answer carrying more than L{MAX_TAGS} tags, or a
tag over L{MAX_TAG_BYTES} bytes, is served but not stored, so that no stored
entry ever lacks a tag it should be purged by.

Tags belong to a tenant: the stores key every tag by (tenant, tag).  How a
purge takes effect at once is the stores' business (a generation per tag,
see L{apicache.store.tagindex} and L{apicache.store.redis.scripts}).

Pure functions; a leaf below the cache core.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import unquote_to_bytes

from apicache.config import MAX_TAG_BYTES, MAX_TAGS, RouteConfig

__all__ = [
    "MAX_TAGS",
    "MAX_TAG_BYTES",
    "InvalidTag",
    "TooManyTags",
    "answer_tags",
    "fill_template",
    "route_tags",
    "strip_tags_header",
    "template_names",
    "validate_tag",
    "decode_tag_path",
]

_SPLIT = re.compile(rb"[\s,]+")
_TEMPLATE_PARAM = re.compile(r"\{([^{}]*)\}")
#: what a tag may not hold: separators (it could never be sent in a tags
#: header) and control characters (log lines, Redis keys)
_FORBIDDEN = re.compile(r"[\s,\x00-\x1f\x7f]")


class InvalidTag(ValueError):
    """
    A tag that no entry can carry: empty, over L{MAX_TAG_BYTES} bytes, or
    holding a space, a comma or a control character.
    """


class TooManyTags(ValueError):
    """
    An answer whose tags make it unstorable (``Cache-Status: detail=tags``).
    """


def validate_tag(tag: str) -> str:
    """
    Return ``tag`` if an entry can carry it.

    @raise InvalidTag: it is empty, too long, or holds a forbidden character.
    """
    if not tag:
        raise InvalidTag("the tag is empty")
    if len(tag.encode("utf-8", "surrogatepass")) > MAX_TAG_BYTES:
        raise InvalidTag(f"the tag is longer than {MAX_TAG_BYTES} bytes")
    if _FORBIDDEN.search(tag):
        raise InvalidTag("the tag holds a space, a comma or a control character")
    return tag


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """
    Return ``template`` with each ``{name}`` replaced by ``values[name]``.

    @raise KeyError: a name is not in ``values``.
    """
    return _TEMPLATE_PARAM.sub(lambda m: values[m.group(1)], template)


def template_names(template: str) -> list[str]:
    """
    Return the ``{name}`` names of a tag template, in order.
    """
    return _TEMPLATE_PARAM.findall(template)


def route_tags(route: RouteConfig, params: Sequence[str]) -> tuple[str, ...]:
    """
    Return the tags ``route``'s templates give the resource ``params`` (in
    the route's parameter order), without duplicates.  Used for entries and
    for the tags a pass-through write invalidates.

    @raise InvalidTag: a filled template is not a tag (a parameter made it
        too long).
    """
    if not route.tags:
        return ()
    values = dict(zip(route.params, params, strict=True))
    out: list[str] = []
    for template in route.tags:
        tag = validate_tag(fill_template(template, values))
        if tag not in out:
            out.append(tag)
    return tuple(out)


def answer_tags(
    route: RouteConfig,
    params: Sequence[str],
    headers: Iterable[tuple[bytes, bytes]],
    tags_header: bytes,
) -> tuple[str, ...]:
    """
    Return the tags of an entry: the route's, then the ``tags_header``
    values of its answer split on spaces and commas, without duplicates.

    @param tags_header: the lower-case header name, or ``b""`` for none.
    @raise TooManyTags: more than L{MAX_TAGS} tags, or one that is not a
        tag (over L{MAX_TAG_BYTES} bytes, not UTF-8): the answer must not
        be stored.
    """
    try:
        out = list(route_tags(route, params))
    except InvalidTag as e:
        raise TooManyTags(str(e)) from None
    if tags_header:
        for name, value in headers:
            if name != tags_header:
                continue
            for raw in _SPLIT.split(value):
                if not raw:
                    continue
                if len(raw) > MAX_TAG_BYTES:
                    raise TooManyTags(f"a tag is longer than {MAX_TAG_BYTES} bytes")
                try:
                    tag = validate_tag(raw.decode("utf-8"))
                except (UnicodeDecodeError, InvalidTag) as e:
                    raise TooManyTags(f"a tag is not a tag: {e}") from None
                if tag not in out:
                    out.append(tag)
                    if len(out) > MAX_TAGS:
                        raise TooManyTags(f"more than {MAX_TAGS} tags")
    if len(out) > MAX_TAGS:
        raise TooManyTags(f"more than {MAX_TAGS} tags")
    return tuple(out)


def strip_tags_header(
    headers: Sequence[tuple[bytes, bytes]], tags_header: bytes
) -> Sequence[tuple[bytes, bytes]]:
    """
    Return ``headers`` without ``tags_header`` (never replayed to callers).
    """
    if not tags_header:
        return headers
    return [(k, v) for k, v in headers if k != tags_header]


def decode_tag_path(raw: bytes) -> str:
    """
    Return the tag of a ``DELETE /tags/<tag>`` path segment, percent-decoded
    once.

    @raise InvalidTag: it does not decode to UTF-8 or is not a tag.
    """
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidTag("the tag is not UTF-8 once decoded") from None
    return validate_tag(text)
