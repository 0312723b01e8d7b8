"""
Issue 19, upstream side: the real upstream client (L{UpstreamClient}, its
tenant-safe pool and Twisted's HTTP/1.1 client under it) against a raw TCP
upstream on loopback that writes whatever the test scripts.

- A header block over C{upstream.max_header_bytes} (status line and field
  lines) is refused, 502, and its connection closed; one at the limit is
  read (SPEC.md section 3, "Connections upstream", v3).
- An unknown C{Transfer-Encoding} is refused the same way.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from bounds_support import fetch_from, head_of
from twisted.logger import globalLogPublisher

from apicache.upstream.client import UpstreamUnreachable


@pytest_twisted.ensureDeferred
async def test_a_header_block_at_the_limit_is_read() -> None:
    (got, idle), upstream = await fetch_from(head_of(4096), max_header_bytes=4096)
    assert got.body == b"ok"  # type: ignore[attr-defined]
    assert idle == 1


@pytest_twisted.ensureDeferred
async def test_a_header_block_one_byte_over_the_limit_is_refused_and_its_connection_closed() -> None:
    (got, idle), upstream = await fetch_from(head_of(4097), max_header_bytes=4096)
    assert isinstance(got, UpstreamUnreachable)
    assert str(got) == "the upstream's header block is over 4096 bytes"
    assert idle == 0 and upstream.closed == 1


@pytest_twisted.ensureDeferred
async def test_a_long_field_line_within_the_limit_is_read() -> None:
    """Twisted's line length limit (16 KiB) does not cut below max_header_bytes."""
    (got, _), _ = await fetch_from(head_of(40000), max_header_bytes=65536)
    assert got.body == b"ok"  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_a_line_over_the_limit_is_refused_before_its_end() -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 300_000  # never ends
    (got, idle), upstream = await fetch_from(answer, max_header_bytes=65536)
    assert str(got) == "the upstream's header block is over 65536 bytes"
    assert idle == 0 and upstream.closed == 1


@pytest_twisted.ensureDeferred
async def test_100k_small_headers_are_refused() -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + b"a: b\r\n" * 100_000 + b"Content-Length: 2\r\n\r\nok"
    (got, idle), upstream = await fetch_from(answer)
    assert str(got) == "the upstream's header block is over 65536 bytes"
    assert idle == 0 and upstream.closed == 1


@pytest_twisted.ensureDeferred
async def test_interim_answers_count_toward_the_header_block() -> None:
    """An upstream can't grow the header block with endless 1xx answers."""
    interim = b"HTTP/1.1 100 Continue\r\nX-A: " + b"a" * 1000 + b"\r\n\r\n"
    (got, _), _ = await fetch_from(interim * 100 + head_of(100))
    assert str(got) == "the upstream's header block is over 65536 bytes"


@pytest.mark.parametrize(
    "coding",
    [b"gzip", b"gzip, chunked", b"identity", b"chunked, gzip", b"x-unknown"],
)
@pytest_twisted.ensureDeferred
async def test_an_unknown_transfer_encoding_is_refused_and_its_connection_closed(coding: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n2\r\nok\r\n0\r\n\r\n" % coding
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        (got, idle), upstream = await fetch_from(answer)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert isinstance(got, UpstreamUnreachable)
    assert str(got) == "the upstream's answer uses a transfer coding apicache does not know"
    assert idle == 0 and upstream.closed == 1
    text = " ".join(str(e.get("detail", "")) + str(e.get("log_failure", "")) for e in logged)
    assert "KeyError" not in text


@pytest_twisted.ensureDeferred
async def test_chunked_in_any_case_is_read() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    (got, _), _ = await fetch_from(answer)
    assert got.body == b"ok"  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_two_transfer_encoding_lines_are_refused() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    (got, _), _ = await fetch_from(answer)
    assert isinstance(got, UpstreamUnreachable)


@pytest.mark.parametrize("status", [b"0", b"1", b"99", b"600", b"1199", b"-200"])
@pytest_twisted.ensureDeferred
async def test_a_status_outside_100_599_is_not_http(status: bytes) -> None:
    """Found by the fuzz target: Twisted's parser takes any integer, and 1199 reached callers."""
    (got, idle), upstream = await fetch_from(b"HTTP/1.1 %s X\r\nContent-Length: 2\r\n\r\nok" % status)
    assert isinstance(got, UpstreamUnreachable)
    assert str(got) == "the upstream's answer is not valid HTTP"
    assert idle == 0 and upstream.closed == 1
