"""
What the tests of the HTTP API over treq's StubTreq share: two routes, keys
C{k1} and C{k2}, an upstream that echoes what it was sent
(L{apicache.testing.InMemoryAPI} set up so, as L{App}), and reading the
answers.

Not a test module: test modules import from here, never from each other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from apicache.testing import AutoAnswer, InMemoryAPI
from apicache.upstream.client import UpstreamResponse

ROUTES = [
    {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 10},
    {"type": "template", "path": "/server/templates/<id>", "upstream": "/templates/{id}", "ttl": 10},
]
KEY = {"api-key": "k1"}
T1 = {**KEY, "org_id": "t1"}
OBJ = "http://x/server/object(42)/header"


def echo(path: str, headers: Sequence[tuple[bytes, bytes]]) -> UpstreamResponse:
    """
    Answer with a JSON body holding the path and the headers the upstream
    was sent, and the entity tag C{"e"}.
    """
    body = json.dumps({"path": path, "headers": [[k.decode(), v.decode()] for k, v in headers]}).encode()
    return UpstreamResponse(200, [(b"content-type", b"application/json"), (b"etag", b'"e"')], body)


def App(
    server: dict[str, Any] | None = None, auto: AutoAnswer | None = echo, routes: Sequence[dict[str, Any]] = ROUTES
) -> InMemoryAPI:
    """
    Return the API in memory with L{ROUTES} and keys C{k1} and C{k2}, its
    upstream answering with C{auto} (L{echo}).
    """
    return InMemoryAPI(server=server, auto=auto, routes=routes, api_keys=("k1", "k2"))


def result(tc: SynchronousTestCase, d: Deferred[Any]) -> tuple[int, Headers, bytes]:
    """
    Return (status, headers, body) of a StubTreq answer.
    """
    r = tc.successResultOf(d)
    body = tc.successResultOf(r.content())
    return r.code, r.headers, body


def error_of(tc: SynchronousTestCase, d: Deferred[Any]) -> tuple[int, str]:
    """
    Return the status and the C{error} code of a JSON error answer.
    """
    code, headers, body = result(tc, d)
    assert headers.getRawHeaders("content-type") == ["application/json"]
    data = json.loads(body)
    assert set(data) >= {"error", "message"}
    return code, data["error"]


def sync_case() -> SynchronousTestCase:
    """
    Return a test case whose C{successResultOf} plain pytest functions use.
    """
    return SynchronousTestCase()
