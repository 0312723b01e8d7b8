"""
The real daemon in front of json-server 0.17.4 (npm), a maintained REST
server nobody here wrote: a paginated walk that follows the rewritten
``Link`` headers, a ``PATCH`` through ``pass_methods`` followed by a
``MISS``, ``DELETE`` forwarded or refused, ``PURGE`` and a 405 with
``Allow``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import tomli_w
from rest_servers import RestServer, call, json_server

from apicache.harness.launchers import Daemon

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
