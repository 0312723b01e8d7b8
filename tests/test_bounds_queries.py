"""
Issue 19, logs and queries (SPEC.md section 4, v3):

- access-log masking treats C{;} as a parameter separator too, and also
  covers names containing C{pass} or C{jwt};
- C{?flag} is forwarded as C{flag}, not C{flag=}, and C{?flag} and
  C{?flag=} are different queries (keys);
- a raw (not percent-encoded) byte outside ASCII in the query is
  C{400 invalid_query}, not C{bad_request}.
"""

from __future__ import annotations

import pytest
from bounds_support import BoundedWire, answers, refusal

from apicache.cache.keys import canonical_query
from apicache.ops.logs import redact_query


@pytest.mark.parametrize(
    "query, logged",
    [
        (b"a=1;token=X", "a=1;token=***"),
        (b"a=1;b=2&token=X;c=3", "a=1;b=2&token=***;c=3"),
        (b"pass=hunter2", "pass=***"),
        (b"passphrase=x&page=2", "passphrase=***&page=2"),
        (b"id_jwt=eyJ&JWT=eyJ", "id_jwt=***&JWT=***"),
        (b"user=bob;PassWord=x", "user=bob;PassWord=***"),
        (b"%70ass=x", "%70ass=***"),
        (b"flag;token", "flag;token"),  # no value to hide
        (b"page=2;sort=name", "page=2;sort=name"),
    ],
)
def test_masking_splits_on_semicolons_and_covers_pass_and_jwt(query: bytes, logged: str) -> None:
    assert redact_query(query) == logged


@pytest.mark.parametrize(
    "raw, canonical",
    [
        (b"flag", "flag"),
        (b"flag=", "flag="),
        (b"b&a=1&flag", "a=1&b&flag"),
        (b"x=2&x&x=", "x=2&x&x="),  # stable for repeated names
        (b"a+b=c%20d", "a%20b=c%20d"),
        (b"a=1&&b=2", "a=1&b=2"),
    ],
)
def test_a_parameter_without_equals_keeps_its_form(raw: bytes, canonical: str) -> None:
    assert canonical_query(raw) == canonical


def get(query: bytes, method: bytes = b"GET") -> bytes:
    return b"%s /server/object(1)/header?%s HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\n\r\n" % (method, query)


def test_flag_is_forwarded_as_it_came_and_keyed_apart_from_flag_equals() -> None:
    w = BoundedWire()
    for query in (b"flag", b"flag=", b"flag", b"flag="):
        protocol, transport = w.connect()
        protocol.dataReceived(get(query))
        assert answers(transport.drain()) == [200]
    assert [f.path for f in w.upstream.fetched] == ["/object(1)/header?flag", "/object(1)/header?flag="]


@pytest.mark.parametrize("query", [b"a=\xff", b"name=\xc3\xa9", b"\xe2\x82\xac=1"])
def test_a_raw_non_ascii_byte_in_the_query_is_invalid_query(query: bytes) -> None:
    w = BoundedWire()
    protocol, transport = w.connect()
    protocol.dataReceived(get(query))
    assert refusal(transport.value())[:2] == (400, "invalid_query")
    assert transport.disconnecting
    assert w.upstream.fetched == []


def test_a_head_request_with_a_raw_non_ascii_query_gets_no_body() -> None:
    w = BoundedWire()
    protocol, transport = w.connect()
    protocol.dataReceived(get(b"a=\xff", b"HEAD"))
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and body == b""


def test_a_raw_non_ascii_byte_in_the_path_is_still_a_bad_request() -> None:
    w = BoundedWire()
    protocol, transport = w.connect()
    protocol.dataReceived(b"GET /server/object(\xff)/header?a=\xff HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refusal(transport.value())[:2] == (400, "bad_request")
