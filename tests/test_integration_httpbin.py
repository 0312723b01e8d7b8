"""
The real daemon in front of httpbin (PyPI, under waitress), a maintained
HTTP server nobody here wrote, which echoes what it receives: a stored
answer, a ``PATCH`` through ``pass_methods`` that reaches the upstream
with its body, ``Via``, ``set_headers`` and ``traceparent``, then a
``MISS``; ``Location`` and ``Link`` rewritten; ``set_headers`` values never
in the logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import tomli_w
from rest_servers import RestServer, call, httpbin

from apicache.harness.launchers import Daemon
from apicache.harness.polling import wait_until

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

KEY = "it-key"
SECRET = "upstream-secret-4f1c"
TENANT = {"api-key": KEY, "org_id": "acme"}
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Stack:
    def __init__(self, server: RestServer, daemon: Daemon) -> None:
        self.server = server
        self.daemon = daemon

    def call(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> Any:
        return call(self.daemon.port, method, path, {**TENANT, **(headers or {})}, body)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("httpbin")
    server = httpbin(tmp)
    config = {
        "server": {"api_keys": [KEY], "shutdown_grace": 2.0},
        "upstream": {
            "base_url": server.url,
            "timeout": 5.0,
            "set_headers": {"x-api-key": "${UPSTREAM_KEY}"},
        },
        "routes": [
            {
                "type": "anything",
                "path": "/api/anything/<id>",
                "upstream": "/anything/{id}",
                "ttl": 60,
                "pass_methods": ["POST", "PATCH"],
            },
            {"type": "redirect", "path": "/api/redirect", "upstream": "/redirect-to", "ttl": 60},
            {"type": "headers", "path": "/api/response-headers", "upstream": "/response-headers", "ttl": 60},
        ],
    }
    path = tmp / "apicache.toml"
    path.write_text(tomli_w.dumps(config))
    daemon = Daemon(str(path), api_key=KEY, env={"UPSTREAM_KEY": SECRET})
    try:
        daemon.start()
        yield Stack(server, daemon)
    finally:
        daemon.kill()
        server.stop()


def test_a_stored_answer_then_a_patch_then_a_miss(stack: Stack) -> None:
    first = stack.call("GET", "/api/anything/1")
    assert (first.status, first.header("x-cache")) == (200, "MISS")
    assert stack.call("GET", "/api/anything/1").header("x-cache") == "HIT"
    r = stack.call(
        "PATCH",
        "/api/anything/1?dry=0&show_env=1",
        {"content-type": "application/json", "if-match": '"v1"', "traceparent": PARENT},
        b'{"title": "patched"}',
    )
    assert (r.status, r.header("x-cache")) == (200, "MISS")
    assert r.header("cache-status").replace(" ", "") == "apicache;fwd=method"
    echo = r.json()
    assert (echo["method"], echo["data"], echo["args"]) == (
        "PATCH",
        '{"title": "patched"}',
        {"dry": "0", "show_env": "1"},
    )
    sent = echo["headers"]  # as httpbin received them (show_env: Via included)
    assert sent["Via"] == "1.1 apicache"
    assert sent["X-Api-Key"] == SECRET
    assert sent["Content-Type"] == "application/json"
    assert sent["If-Match"] == '"v1"'
    assert sent["Traceparent"].split("-")[1] == PARENT.split("-")[1]
    assert "Org_id" not in sent and "Api-Key" not in sent
    again = stack.call("GET", "/api/anything/1")
    assert again.header("x-cache") == "MISS"


def test_every_upstream_request_carries_via_and_set_headers(stack: Stack) -> None:
    # show_env: httpbin echoes Via only then
    r = stack.call("GET", "/api/anything/2?show_env=1", {"x-api-key": "caller's own"})
    sent = r.json()["headers"]
    assert (sent["Via"], sent["X-Api-Key"]) == ("1.1 apicache", SECRET)


def test_location_is_rewritten_to_the_route(stack: Stack) -> None:
    target = quote(f"{stack.server.url}/anything/9?x=1", safe="")
    r = stack.call("GET", f"/api/redirect?url={target}&status_code=302")
    assert r.status == 302
    assert r.header("location") == "/api/anything/9?x=1"
    outside = quote("https://example.org/elsewhere", safe="")
    assert stack.call("GET", f"/api/redirect?url={outside}").header("location") == "https://example.org/elsewhere"


def test_link_is_rewritten_and_replayed_from_the_cache(stack: Stack) -> None:
    link = f'<{stack.server.url}/anything/3>; rel="next", <https://example.org/x>; rel="help"'
    path = f"/api/response-headers?Link={quote(link, safe='')}"
    for x_cache in ("MISS", "HIT"):
        r = stack.call("GET", path)
        assert (r.status, r.header("x-cache")) == (200, x_cache)
        assert r.header("link") == '</api/anything/3>; rel="next", <https://example.org/x>; rel="help"'


def test_a_write_to_a_route_without_it_is_405(stack: Stack) -> None:
    r = stack.call("PUT", "/api/anything/1", {"content-type": "application/json"}, b"{}")
    assert (r.status, r.header("allow")) == (405, "GET, HEAD, DELETE, PURGE, POST, PATCH")
    assert json.loads(r.body)["error"] == "method_not_allowed"


def test_set_header_values_never_reach_the_logs(stack: Stack) -> None:
    stack.call("GET", "/api/anything/4")
    stack.call("POST", "/api/anything/4", {"content-type": "text/plain"}, b"x")
    # access lines are written in batches (every 0.2 s)

    def post_logged() -> str:
        logs = stack.daemon.logs()
        return logs if '"method":"POST"' in logs.replace(" ", "") else ""

    logs = wait_until(post_logged, 5, 0.05, "the POST's access line")
    assert '"method": "POST"' in logs or '"method":"POST"' in logs
    assert SECRET not in logs
