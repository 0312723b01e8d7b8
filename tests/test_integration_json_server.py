"""
The real daemon in front of json-server 0.17.4 (npm), a maintained REST
server nobody here wrote: a paginated walk that follows the rewritten
``Link`` headers, a ``PATCH`` through ``pass_methods`` followed by a
``MISS``, ``DELETE`` forwarded or refused, ``PURGE`` and a 405 with
``Allow``; a revalidation of its weak ETags costing one upstream request,
counted in json-server's own request log.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tomli_w
from rest_servers import RestServer, call, json_server

from apicache.harness.launchers import Daemon
from apicache.harness.polling import wait_until

# starts real processes; the first test may run `npm ci` (its own limit is 600 s)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(660)]

KEY = "it-key"
TENANT = {"api-key": KEY, "org_id": "acme"}
POSTS = [{"id": i, "title": f"post {i}", "author": "a"} for i in range(1, 105)]
_LINK = re.compile(r'<([^>]*)>;\s*rel="([^"]*)"')


class Stack:
    def __init__(self, server: RestServer, daemon: Daemon) -> None:
        self.server = server
        self.daemon = daemon

    def call(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> Any:
        return call(self.daemon.port, method, path, {**TENANT, **(headers or {})}, body)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("json-server")
    server = json_server(tmp, {"posts": POSTS})
    config = {
        "server": {"api_keys": [KEY], "shutdown_grace": 2.0},
        "upstream": {"base_url": server.url, "timeout": 5.0},
        "routes": [
            {"type": "posts", "path": "/api/posts", "upstream": "/posts", "ttl": 60, "pass_methods": ["POST"]},
            {
                "type": "post",
                "path": "/api/posts/<id>",
                "upstream": "/posts/{id}",
                "ttl": 60,
                "pass_methods": ["PATCH", "PUT", "DELETE"],
            },
        ],
    }
    path = tmp / "apicache.toml"
    path.write_text(tomli_w.dumps(config))
    daemon = Daemon(str(path), api_key=KEY)
    try:
        daemon.start()
        yield Stack(server, daemon)
    finally:
        daemon.kill()
        server.stop()


def links(header: str | None) -> dict[str, str]:
    return {rel: url for url, rel in _LINK.findall(header or "")}


def test_a_paginated_walk_follows_rewritten_links(stack: Stack) -> None:
    seen: list[int] = []
    url: str | None = "/api/posts?_page=1&_limit=25"
    pages = 0
    while url is not None:
        r = stack.call("GET", url)
        assert r.status == 200, r.body
        assert r.header("x-total-count") == "104"
        found = links(r.header("link"))
        assert set(found) >= {"first", "last"}
        # every link goes through apicache, none around it
        assert all(u.startswith("/api/posts?") for u in found.values()), found
        seen.extend(p["id"] for p in r.json())
        url = found.get("next")
        pages += 1
    assert pages == 5
    assert seen == list(range(1, 105))


def test_patch_through_pass_methods_then_a_miss(stack: Stack) -> None:
    before = stack.call("GET", "/api/posts/3")
    assert (before.status, before.json()["title"]) == (200, "post 3")
    r = stack.call("PATCH", "/api/posts/3", {"content-type": "application/json"}, b'{"title": "patched"}')
    assert r.status == 200
    assert r.json() == {"id": 3, "title": "patched", "author": "a"}
    assert r.header("x-cache") == "MISS"
    assert r.header("cache-status").replace(" ", "").endswith("apicache;fwd=method")
    after = stack.call("GET", "/api/posts/3")
    assert (after.status, after.header("x-cache")) == (200, "MISS")
    assert after.json()["title"] == "patched"


def test_delete_is_forwarded_with_a_tenant_and_refused_without(stack: Stack) -> None:
    r = call(stack.daemon.port, "DELETE", "/api/posts/5", {"api-key": KEY})
    assert (r.status, r.json()["error"]) == (400, "missing_tenant")
    assert stack.call("GET", "/api/posts/5").status == 200
    assert stack.call("DELETE", "/api/posts/5").status == 200
    gone = stack.call("GET", "/api/posts/5")
    assert (gone.status, gone.header("x-cache")) == (404, "MISS")


def test_purge_invalidates_without_reaching_the_upstream(stack: Stack) -> None:
    stack.call("GET", "/api/posts/4")
    r = stack.call("PURGE", "/api/posts/4")
    assert r.status == 200 and set(r.json()) == {"invalidated"}
    r = call(stack.daemon.port, "PURGE", "/api/posts?_page=1", {"api-key": KEY})
    assert r.status == 200 and set(r.json()) == {"invalidated"}
    assert stack.call("GET", "/api/posts/4").json()["title"] == "post 4"


def test_405_names_the_allowed_methods(stack: Stack) -> None:
    r = stack.call("POST", "/api/posts/3", {"content-type": "application/json"}, b"{}")
    assert (r.status, r.json()["error"]) == (405, "method_not_allowed")
    assert r.header("allow") == "GET, HEAD, DELETE, PURGE, PATCH, PUT"
    r = stack.call("PATCH", "/api/posts", {"content-type": "application/json"}, b"{}")
    assert (r.status, r.header("allow")) == (405, "GET, HEAD, DELETE, PURGE, POST")


def test_post_creates_and_the_collection_is_fetched_again(stack: Stack) -> None:
    stack.call("GET", "/api/posts?_page=11&_limit=10")
    r = stack.call("POST", "/api/posts", {"content-type": "application/json"}, b'{"title": "new", "author": "b"}')
    assert r.status == 201
    created = r.json()["id"]
    last = stack.call("GET", "/api/posts?_page=11&_limit=10")
    assert last.header("x-cache") == "MISS"
    assert created in [p["id"] for p in last.json()]


# -- revalidation with json-server's weak ETags (issue 20 item 6) ------------


class Logged:
    """apicache in front of a json-server that logs each request it answers."""

    def __init__(self, server: RestServer, daemon: Daemon) -> None:
        self.server = server
        self.daemon = daemon

    def call(self, path: str) -> Any:
        return call(self.daemon.port, "GET", path, TENANT)

    def upstream_answers(self, path: str) -> list[str]:
        """
        Return the status of each request for ``path`` json-server logged
        (morgan's ``dev`` format: ``GET /posts/1 304 0.512 ms - -``, coloured).
        """
        text = _ANSI.sub("", self.server.log_path.read_text(errors="replace"))
        return [m.group(1) for m in re.finditer(rf"^GET {re.escape(path)} (\d{{3}}) ", text, re.MULTILINE)]

    def settled(self, path: str, count: int) -> list[str]:
        """
        Return the statuses logged for ``path`` once ``count`` are there
        (morgan writes its line as the answer finishes) and no more follow.
        """
        wait_until(lambda: len(self.upstream_answers(path)) >= count, 10, 0.05, f"{count} answers to {path} logged")
        time.sleep(0.3)
        return self.upstream_answers(path)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    tmp = tmp_path_factory.mktemp("json-server-logged")
    server = json_server(tmp, {"posts": POSTS[:10]}, quiet=False)
    config = {
        "server": {"api_keys": [KEY], "shutdown_grace": 2.0},
        "upstream": {"base_url": server.url, "timeout": 5.0},
        "routes": [
            # json-server (Express) answers Cache-Control: no-cache, Expires: -1
            # and a weak ETag: with freshness = "upstream" every use is revalidated
            {"type": "post", "path": "/api/posts/<id>", "upstream": "/posts/{id}", "ttl": 60, "freshness": "upstream"},
            {"type": "comment", "path": "/api/timed/<id>", "upstream": "/posts/{id}", "ttl": 1},
        ],
    }
    path = tmp / "apicache.toml"
    path.write_text(tomli_w.dumps(config))
    daemon = Daemon(str(path), api_key=KEY)
    try:
        daemon.start()
        yield Logged(server, daemon)
    finally:
        daemon.kill()
        server.stop()


def test_a_revalidation_costs_exactly_one_upstream_request(logged: Logged) -> None:
    """
    RFC 9111 section 4.3.4: json-server's 304 carries the weak ETag it was
    asked about (W/"…"), which selects the stored answer by weak comparison.
    Issue 20: every revalidation cost 2 upstream requests (a 304, then a
    200) and REVALIDATED never appeared.
    """
    first = logged.call("/api/posts/2")
    assert (first.status, first.header("x-cache")) == (200, "MISS")
    assert first.header("etag").startswith('W/"')
    assert logged.settled("/posts/2", 1) == ["200"]
    for n in range(2, 5):
        again = logged.call("/api/posts/2")
        assert (again.status, again.header("x-cache")) == (200, "REVALIDATED")
        assert again.header("cache-status").replace(" ", "").endswith("apicache;fwd=stale;fwd-status=304")
        assert again.json() == first.json()
        # one conditional request, answered 304, and nothing else
        assert logged.settled("/posts/2", n) == ["200"] + ["304"] * (n - 1)


def test_an_expired_entry_is_revalidated_with_one_request(logged: Logged) -> None:
    """RFC 9111 sections 4.3.1 and 4.3.4, freshness = "route" (ttl = 1)."""
    assert logged.call("/api/timed/3").header("x-cache") == "MISS"
    assert logged.call("/api/timed/3").header("x-cache") == "HIT"
    assert logged.settled("/posts/3", 1) == ["200"]
    time.sleep(1.1)
    r = logged.call("/api/timed/3")
    assert (r.status, r.header("x-cache")) == (200, "REVALIDATED")
    assert logged.call("/api/timed/3").header("x-cache") == "HIT"
    assert logged.settled("/posts/3", 2) == ["200", "304"]
