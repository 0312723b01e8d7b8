"""
The writers of answers: L{write_result}, the one writer of a cache result
(hits and misses alike: status line, headers and body in one write, or a
304 when the caller's condition fails), and the small helpers that answer
a JSON body or an API error.
"""

from __future__ import annotations

import json
import math
from typing import Any

from twisted.web.http import RESPONSES
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from apicache._twisted import raw_headers
from apicache.cache.policy import condition_fails, header, not_modified_headers
from apicache.cache.ranges import PartialAnswer, range_answer
from apicache.cache.tenant import BYPASS, HIT, MISS, REVALIDATED, STALE, CacheResult
from apicache.cache.wire import canonical_name, header_block
from apicache.http.errors import JSON, ApiError, error_body
from apicache.store.interface import CachedResponse

__all__ = ["refuse", "json_answer", "write_result"]

_X_CACHE = {c: c.encode("ascii") for c in (HIT, STALE, REVALIDATED, MISS, BYPASS)}
# the conditions are read from twisted.web's table of raw headers directly,
# with names worked out once: getRawHeaders encodes the name on every call
_RAW_IF_NONE_MATCH = canonical_name(b"if-none-match")
_RAW_IF_MODIFIED_SINCE = canonical_name(b"if-modified-since")
_RAW_RANGE = canonical_name(b"range")
_RAW_IF_RANGE = canonical_name(b"if-range")
#: Not sent with a 416: it carries no representation (RFC 9110 section 15.5.17).
_NOT_ON_416 = frozenset({b"content-type", b"content-encoding"})


def refuse(request: IRequest, error: ApiError) -> bytes:
    """
    Set ``request``'s status and content type for ``error``; return the
    JSON body to write.
    """
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", JSON)
    for name, value in error.headers:
        request.setHeader(name, value)
    return error_body(error.code, error.message)


def json_answer(request: IRequest, status: int, body: Any) -> bytes:
    """
    Set ``request``'s status and a JSON content type; return ``body`` as JSON.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    return json.dumps(body).encode()


#: (protocol, status) -> (status line, reason phrase), for the statuses answered
_STATUS_LINES: dict[tuple[bytes, int], tuple[bytes, bytes]] = {}


def _status_line(proto: bytes, status: int) -> tuple[bytes, bytes]:
    message = RESPONSES.get(status, b"Unknown Status")
    line = (b"%s %d %s\r\n" % (proto, status, message), message)
    if len(_STATUS_LINES) < 64 and len(proto) <= 16:
        _STATUS_LINES[(proto, status)] = line
    return line


def write_result(request: Any, result: CacheResult) -> Any:
    """
    Write a cache result's whole answer in one go and finish ``request``:
    the one writer of proxied answers, hits and misses alike.

    This is twisted.web's C{Request.write} for one narrow case, an answer
    with a known body: the status line, the headers already set on the
    request but ``Date`` (``Connection: close`` when the connection does
    not persist), the answer's replayed headers as built once when it
    arrived (``Date`` among them), ``Cache-Status`` with apicache's member,
    ``X-Cache``, ``Age`` and ``Content-Length``, without building and
    re-normalising a C{Headers} object.  A ``HEAD`` gets the same head and
    no body.  A conditional ``GET``/``HEAD`` whose condition fails on a
    stored 2xx answer gets a 304 (L{write_not_modified}); a ``GET`` with
    one byte range of a stored 200 a 206 or 416 (L{_write_partial}).

    @return: C{NOT_DONE_YET} (the request is finished: twisted.web and
        Klein must not write again).
    """
    r = result.response
    status = r.status
    request.cache = result.cache
    age = result.age
    member = result.member
    if member is None:
        # a hit: freshness left, negative once stale (RFC 9211 section 2.2)
        member = b"apicache;hit;ttl=%d" % math.floor(r.expires_at - r.stored_at - (age or 0.0))
    if result.stored and 200 <= status < 300:
        conditions = raw_headers(request.requestHeaders)
        if_none_match = conditions.get(_RAW_IF_NONE_MATCH) or None
        if_modified_since = None if if_none_match else conditions.get(_RAW_IF_MODIFIED_SINCE) or None
        if (if_none_match or if_modified_since) and _condition_fails(if_none_match, if_modified_since, r):
            return _write_not_modified(request, result, member)
        # SPEC.md section 3 (v3): after the conditions (RFC 9110 section 13.2.2)
        ranges = conditions.get(_RAW_RANGE)
        if ranges and status == 200:
            partial = range_answer(
                request.method,
                status,
                ranges,
                conditions.get(_RAW_IF_RANGE) or None,
                header(r.headers, b"etag"),
                header(r.headers, b"last-modified"),
                len(r.body),
            )
            if partial is not None:
                return _write_partial(request, result, member, partial)
    body = r.body
    request.code = status
    proto = request.clientproto
    line = _STATUS_LINES.get((proto, status))
    if line is None:
        line = _status_line(proto, status)
    request.code_message = line[1]
    head = [line[0]]
    extra = raw_headers(request.responseHeaders)
    if extra:
        for name, values in extra.items():
            if name != b"Date":
                for value in values:
                    head.append(b"%s: %s\r\n" % (name, value))
    # entries built elsewhere than the cache core may lack their wire form
    head.append(r.head or header_block(r.headers))
    x_cache = _X_CACHE[result.cache]
    if status == 204:
        # RFC 9110 section 8.6: a 204 (now stored too) has no Content-Length
        head.append(b"%s\r\nX-Cache: %s\r\n" % (member, x_cache))
        if age is not None:
            head.append(b"Age: %d\r\n" % max(0, int(age)))
        head.append(b"\r\n")
        body = b""
    elif age is None:
        head.append(b"%s\r\nX-Cache: %s\r\nContent-Length: %d\r\n\r\n" % (member, x_cache, len(body)))
    else:
        head.append(
            b"%s\r\nX-Cache: %s\r\nAge: %d\r\nContent-Length: %d\r\n\r\n"
            % (member, x_cache, max(0, int(age)), len(body))
        )
    request.startedWriting = 1
    if request.method == b"HEAD":
        request.channel.writeSequence([b"".join(head)])
    else:
        request.sentLength = len(body)
        request.channel.writeSequence([b"".join(head), body])
    request.finish()
    return NOT_DONE_YET


def _write_partial(request: Any, result: CacheResult, member: bytes, partial: PartialAnswer) -> Any:
    """
    Answer a ``GET`` with one byte range from a stored 200 (RFC 9110
    section 14, SPEC.md section 3): a 206 with the bytes the range covers
    and ``Content-Range``, or a 416 with ``Content-Range: bytes */length``
    and no body.
    """
    r = result.response
    request.code = partial.status
    request.code_message = RESPONSES[partial.status]
    head = [b"%s %d %s\r\n" % (request.clientproto, partial.status, request.code_message)]
    for name, values in request.responseHeaders.getAllRawHeaders():
        if name != b"Date":
            for value in values:
                head.append(b"%s: %s\r\n" % (name, value))
    if partial.status == 206:
        body = r.body[partial.start : partial.stop]
        head.append(r.head or header_block(r.headers))
    else:
        body = b""
        head.append(header_block([(k, v) for k, v in r.headers if k not in _NOT_ON_416]))
    head.append(b"%s\r\nX-Cache: %s\r\n" % (member, _X_CACHE[result.cache]))
    if result.age is not None:
        head.append(b"Age: %d\r\n" % max(0, int(result.age)))
    head.append(b"Content-Range: %s\r\nContent-Length: %d\r\n\r\n" % (partial.content_range, len(body)))
    request.startedWriting = 1
    request.sentLength = len(body)
    request.channel.writeSequence([b"".join(head), body])
    request.finish()
    return NOT_DONE_YET


#: whether a caller's conditions fail on a stored answer, by the conditions
#: and the wire form of the answer's headers (L{condition_fails} is a pure
#: function of both): clients that revalidate send the same ones again.
#: Bounded as L{_NOT_MODIFIED_BLOCKS}; conditions over 256 bytes are not
#: remembered.
_CONDITIONS: dict[tuple[bytes, bytes | None, bytes | None], bool] = {}
_CONDITION_BYTES = 256


def _condition_fails(
    if_none_match: list[bytes] | None, if_modified_since: list[bytes] | None, response: CachedResponse
) -> bool:
    """
    Return L{condition_fails} for ``response``'s headers, remembered.
    """
    head = response.head
    if (
        not head
        or len(head) > _NOT_MODIFIED_HEAD_BYTES
        or (if_none_match is not None and (len(if_none_match) != 1 or len(if_none_match[0]) > _CONDITION_BYTES))
        or (if_modified_since is not None and len(if_modified_since[0]) > _CONDITION_BYTES)
    ):
        return condition_fails(if_none_match, if_modified_since, response.headers)
    key = (head, if_none_match[0] if if_none_match else None, if_modified_since[0] if if_modified_since else None)
    fails = _CONDITIONS.get(key)
    if fails is None:
        fails = condition_fails(if_none_match, if_modified_since, response.headers)
        if len(_CONDITIONS) >= _NOT_MODIFIED_BLOCKS_MAX:
            _CONDITIONS.clear()
        _CONDITIONS[key] = fails
    return fails


#: the header blocks of 304s, by the wire form of the stored answer's headers
#: they are drawn from (L{CachedResponse.head}): answers that validate
#: repeat them.  Bounded in entries (forgotten at once when full) and in
#: the size of what each holds alive.
_NOT_MODIFIED_BLOCKS: dict[bytes, bytes] = {}
_NOT_MODIFIED_BLOCKS_MAX = 1024
_NOT_MODIFIED_HEAD_BYTES = 1024


def _not_modified_block(response: CachedResponse) -> bytes:
    """
    Return the header block of a 304 answered from ``response``: the
    stored headers SPEC.md section 3 lists, built once per stored head.
    """
    key = response.head
    if key and len(key) > _NOT_MODIFIED_HEAD_BYTES:
        key = b""
    block = _NOT_MODIFIED_BLOCKS.get(key) if key else None
    if block is None:
        block = header_block(not_modified_headers(response.headers))
        if key:
            if len(_NOT_MODIFIED_BLOCKS) >= _NOT_MODIFIED_BLOCKS_MAX:
                _NOT_MODIFIED_BLOCKS.clear()
            _NOT_MODIFIED_BLOCKS[key] = block
    return block


def _write_not_modified(request: Any, result: CacheResult, member: bytes) -> Any:
    """
    Answer a conditional request ``304`` from a stored answer, with no body
    and only the headers SPEC.md section 3 lists.
    """
    request.code = 304
    request.code_message = RESPONSES[304]
    head = [b"%s 304 %s\r\n" % (request.clientproto, request.code_message)]
    for name, values in request.responseHeaders.getAllRawHeaders():
        if name != b"Date":
            for value in values:
                head.append(b"%s: %s\r\n" % (name, value))
    head.append(_not_modified_block(result.response))
    head.append(b"%s\r\nX-Cache: %s\r\n" % (member, _X_CACHE[result.cache]))
    if result.age is not None:
        head.append(b"Age: %d\r\n" % max(0, int(result.age)))
    head.append(b"\r\n")
    request.startedWriting = 1
    request.channel.writeSequence([b"".join(head)])
    request.finish()
    return NOT_DONE_YET
