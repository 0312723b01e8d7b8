"""
The HTTP API (SPEC.md section 4) over StubTreq: the Klein resource with a
real registry and memory store, a fake upstream and a task.Clock.
"""

from __future__ import annotations

import base64
import json

import pytest
from http_support import KEY, OBJ, T1, App, error_of, result
from http_support import sync_case as _tc
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from apicache.testing import InMemoryAPI
from apicache.upstream.client import BodyTooLarge, Overloaded, UpstreamResponse, UpstreamTimeout, UpstreamUnreachable


@pytest.fixture
def app():
    return App()


class TestProxy:
    def test_miss_then_hit_with_age(self, app):
        tc = _tc()
        code, h, body = result(tc, app.request("GET", OBJ, headers={**T1, "authorization": "Bearer a"}))
        assert code == 200
        assert h.getRawHeaders("x-cache") == ["MISS"]
        assert h.getRawHeaders("age") is None
        assert json.loads(body)["path"] == "/object(42)/header"
        assert ["authorization", "Bearer a"] in json.loads(body)["headers"]
        app.clock.advance(4)
        code, h, body2 = result(tc, app.request("GET", OBJ, headers={**T1, "authorization": "Bearer b"}))
        assert (code, body2) == (200, body)
        assert h.getRawHeaders("x-cache") == ["HIT"]
        assert h.getRawHeaders("age") == ["4"]
        assert h.getRawHeaders("etag") == ['"e"']
        assert h.getRawHeaders("content-type") == ["application/json"]
        assert len(app.upstream.fetched) == 1

    def test_head_is_answered_without_a_body(self, app):
        tc = _tc()
        code, h, body = result(tc, app.request("HEAD", OBJ, headers=T1))
        assert (code, body) == (200, b"")
        assert h.getRawHeaders("x-cache") == ["MISS"]

    def test_query_is_canonical_in_key_and_upstream(self, app):
        tc = _tc()
        code, _, body = result(tc, app.request("GET", OBJ + "?b=2&a=x+y", headers=T1))
        assert json.loads(body)["path"] == "/object(42)/header?a=x%20y&b=2"
        _, h, _ = result(tc, app.request("GET", OBJ + "?a=x%20y&b=2", headers=T1))
        assert h.getRawHeaders("x-cache") == ["HIT"]

    def test_parameter_is_reencoded_for_the_upstream(self, app):
        tc = _tc()
        _, _, body = result(tc, app.request("GET", "http://x/server/templates/a%20b%3F", headers=T1))
        assert json.loads(body)["path"] == "/templates/a%20b%3F"

    def test_keyed_headers_make_variants_and_forwarded_only_configured(self, app):
        tc = _tc()
        _, _, body = result(
            tc, app.request("GET", OBJ, headers={**T1, "accept-language": "de", "x-other": "1", "cookie": "c=1"})
        )
        sent = [k for k, _ in json.loads(body)["headers"]]
        # SPEC.md section 3 (v2): the normalised accept-encoding is always sent
        assert sent == ["accept-language", "accept-encoding"]
        _, h, _ = result(tc, app.request("GET", OBJ, headers={**T1, "accept-language": "en"}))
        assert h.getRawHeaders("x-cache") == ["MISS"]
        _, h, _ = result(tc, app.request("GET", OBJ, headers={**T1, "accept-language": "de"}))
        assert h.getRawHeaders("x-cache") == ["HIT"]

    def test_upstream_status_and_headers_pass_through(self):
        tc = _tc()
        app = App(auto=lambda p, h: UpstreamResponse(302, [(b"location", b"/elsewhere")], b""))
        code, h, _ = result(tc, app.request("GET", OBJ, headers=T1))
        assert code == 302
        assert h.getRawHeaders("location") == ["/elsewhere"]
        assert h.getRawHeaders("x-cache") == ["MISS"]

    @pytest.mark.parametrize(
        "error, status, code",
        [
            (UpstreamUnreachable("refused"), 502, "upstream_unreachable"),
            (BodyTooLarge("big"), 502, "upstream_unreachable"),
            (UpstreamTimeout("slow"), 504, "upstream_timeout"),
            (Overloaded("busy"), 503, "overloaded"),
        ],
    )
    def test_upstream_failures_map_to_errors(self, error, status, code):
        def fail(path, headers):
            raise error

        tc = _tc()
        app = App(auto=None)
        d = app.request("GET", OBJ, headers=T1)
        app.upstream.pending[0].fail(error)
        app.treq.flush()
        assert error_of(tc, d) == (status, code)

    def test_max_in_flight_answers_overloaded(self):
        tc = _tc()
        app = App(auto=None)
        app.upstream.max_in_flight = 1
        first = app.request("GET", OBJ, headers=T1)
        second = app.request("GET", "http://x/server/object(43)/header", headers=T1)
        assert error_of(tc, second) == (503, "overloaded")
        tc.assertNoResult(first)

    def test_delete_one_tenant_and_every_tenant(self, app):
        tc = _tc()
        for t in ("t1", "t2"):
            for lang in ("de", "en"):
                result(tc, app.request("GET", OBJ, headers={**KEY, "org_id": t, "accept-language": lang}))
        code, _, body = result(tc, app.request("DELETE", OBJ, headers=T1))
        assert (code, json.loads(body)) == (200, {"invalidated": 2})
        code, _, body = result(tc, app.request("DELETE", OBJ, headers=KEY))
        assert (code, json.loads(body)) == (200, {"invalidated": 2})
        code, _, body = result(tc, app.request("DELETE", OBJ, headers=KEY))
        assert json.loads(body) == {"invalidated": 0}

    def test_clear_of_one_tenant_and_of_everything(self, app):
        tc = _tc()
        for t in ("t1", "t2"):
            result(tc, app.request("GET", OBJ, headers={**KEY, "org_id": t}))
            result(tc, app.request("GET", "http://x/server/templates/1", headers={**KEY, "org_id": t}))
        code, _, body = result(tc, app.request("DELETE", "http://x/clear", headers=T1))
        assert (code, json.loads(body)) == (200, {"invalidated": 2})
        code, _, body = result(tc, app.request("DELETE", "http://x/clear", headers=KEY))
        assert (code, json.loads(body)) == (200, {"invalidated": 2})


class TestRequests:
    @pytest.mark.parametrize(
        "method, url, headers, status, code",
        [
            ("GET", OBJ, {"org_id": "t1"}, 401, "unauthorized"),
            ("GET", OBJ, {"org_id": "t1", "api-key": "wrong"}, 401, "unauthorized"),
            ("GET", "http://x/nowhere", {}, 401, "unauthorized"),
            ("GET", "http://x/", {}, 401, "unauthorized"),
            ("GET", "http://x/nowhere", KEY, 404, "no_route"),
            ("GET", "http://x/server/object(1)/header/more", T1, 404, "no_route"),
            ("GET", OBJ, KEY, 400, "missing_tenant"),
            ("GET", OBJ, {**KEY, "org_id": ""}, 400, "invalid_tenant"),
            ("GET", OBJ, {**KEY, "org_id": "a b"}, 400, "invalid_tenant"),
            ("GET", OBJ, {**KEY, "org_id": "x" * 129}, 400, "invalid_tenant"),
            ("GET", OBJ, {**KEY, "org_id": "t/1"}, 400, "invalid_tenant"),
            ("DELETE", OBJ, {**KEY, "org_id": "a b"}, 400, "invalid_tenant"),
            ("GET", "http://x/server/templates/..%2Fetc", T1, 400, "invalid_parameter"),
            ("GET", "http://x/server/templates/%252e%252e", T1, 400, "invalid_parameter"),
            ("GET", "http://x/server/templates/..", T1, 400, "invalid_parameter"),
            ("GET", "http://x/server/templates/a%5Cb", T1, 400, "invalid_parameter"),
            ("GET", "http://x/server/templates/a%00b", T1, 400, "invalid_parameter"),
            ("GET", "http://x/server/templates/" + "x" * 513, T1, 400, "invalid_parameter"),
            ("DELETE", "http://x/server/templates/..%2F", T1, 400, "invalid_parameter"),
            # SPEC.md section 3: an empty parameter is rejected, not unrouted
            ("GET", "http://x/server/object()/header", T1, 400, "invalid_parameter"),
            ("DELETE", "http://x/server/object()/header", KEY, 400, "invalid_parameter"),
            ("GET", "http://x/server/templates/", T1, 400, "invalid_parameter"),
            # not UTF-8 once decoded: a JSON error, not Klein's plain text
            ("GET", "http://x/server/templates/%FF", T1, 400, "invalid_parameter"),
            ("DELETE", "http://x/server/templates/%C3", KEY, 400, "invalid_parameter"),
            ("POST", "http://x/nowhere%FF", KEY, 400, "invalid_parameter"),
            ("GET", OBJ + "?a=" + "x" * 2048, T1, 400, "invalid_query"),
            ("GET", OBJ + "?a=%FF", T1, 400, "invalid_query"),
            ("POST", OBJ, T1, 405, "method_not_allowed"),
            ("PUT", OBJ, T1, 405, "method_not_allowed"),
            ("POST", "http://x/healthz", KEY, 405, "method_not_allowed"),
            ("GET", "http://x/clear", KEY, 405, "method_not_allowed"),
            ("DELETE", "http://x/", KEY, 405, "method_not_allowed"),
        ],
    )
    def test_bad_requests_get_json_errors_without_reaching_the_upstream(self, app, method, url, headers, status, code):
        assert error_of(_tc(), app.request(method, url, headers=headers)) == (status, code)
        assert app.upstream.fetched == []

    @pytest.mark.parametrize("name", ["api-key", "org_id"])
    def test_duplicate_header_is_refused(self, app, name):
        headers = {"api-key": ["k1"], "org_id": ["t1"]}
        headers[name] = headers[name] * 2
        assert error_of(_tc(), app.request("GET", OBJ, headers=headers)) == (400, "duplicate_header")

    def test_api_key_is_checked_before_routing(self, app):
        assert error_of(_tc(), app.request("GET", "http://x/nowhere", headers={"api-key": "no"}))[0] == 401

    def test_every_configured_key_works(self, app):
        tc = _tc()
        for k in ("k1", "k2"):
            code, _, _ = result(tc, app.request("GET", OBJ, headers={"api-key": k, "org_id": "t1"}))
            assert code == 200

    def test_health_needs_no_key(self, app):
        tc = _tc()
        code, _, body = result(tc, app.request("GET", "http://x/healthz"))
        assert code == 200
        code, _, body = result(tc, app.request("GET", "http://x/readyz"))
        assert (code, json.loads(body)) == (200, {"ready": True})

    def test_readyz_reports_failing_dependencies(self, app):
        app.api.readiness.add("redis", lambda: False)
        code, _, body = result(_tc(), app.request("GET", "http://x/readyz"))
        assert (code, json.loads(body)) == (503, {"ready": False, "failing": ["redis"]})

    def test_info_reports_node_uptime_tenants_entries_and_bytes(self, app):
        tc = _tc()
        result(tc, app.request("GET", OBJ, headers=T1))
        app.clock.advance(2)
        code, _, body = result(tc, app.request("GET", "http://x/", headers=KEY))
        info = json.loads(body)
        assert code == 200
        assert info["service"] == "apicache"
        assert info["node"] == "n1"
        assert info["uptime_s"] == 2
        assert (info["tenants"], info["entries"]) == (1, 1)
        assert info["bytes"] > 0
        assert "version" in info

    def test_metrics_is_prometheus_text(self, app):
        code, h, body = result(_tc(), app.request("GET", "http://x/metrics", headers=KEY))
        assert code == 200
        assert h.getRawHeaders("content-type")[0].startswith("text/plain")

    def test_reserved_paths_win_over_routes(self):
        app = App(
            routes=[{"type": "all", "path": "/<id>", "upstream": "/all/{id}"}],
        )
        code, _, body = result(_tc(), app.request("GET", "http://x/healthz"))
        assert code == 200
        assert app.upstream.fetched == []

    def test_anonymous_access_needs_no_key(self):
        app = App(server={"api_keys": [], "allow_anonymous": True})
        code, _, _ = result(_tc(), app.request("GET", OBJ, headers={"org_id": "t1"}))
        assert code == 200


def jwt(claims):
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"Bearer h.{part}.s"


class TestTenantClaim:
    @pytest.fixture
    def app(self):
        return App(server={"tenant_claim": "zid"})

    def test_matching_claim_is_served(self, app):
        code, _, _ = result(_tc(), app.request("GET", OBJ, headers={**T1, "authorization": jwt({"zid": "t1"})}))
        assert code == 200

    @pytest.mark.parametrize("auth", [jwt({"zid": "t2"}), jwt({}), "Bearer nonsense", "Basic abc", None])
    def test_other_claims_are_refused(self, app, auth):
        headers = dict(T1)
        if auth:
            headers["authorization"] = auth
        assert error_of(_tc(), app.request("GET", OBJ, headers=headers)) == (403, "tenant_mismatch")


def test_unexpected_error_is_500_with_an_id_that_is_logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:

        def boom(path, headers):
            raise RuntimeError("bug")

        app = App(auto=boom)
        code, data = None, None
        d = app.request("GET", OBJ, headers=T1)
        code, _, body = result(_tc(), d)
        data = json.loads(body)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert code == 500
    assert data["error"] == "internal_error"
    assert data["id"]
    assert any(e.get("error_id") == data["id"] for e in events)


def test_keys_are_checked_even_when_anonymous_is_allowed():
    app = App(server={"allow_anonymous": True})
    assert error_of(_tc(), app.request("GET", OBJ, headers={"org_id": "t1"})) == (401, "unauthorized")


def test_built_in_defaults_serve_info_and_no_routes():
    treq = InMemoryAPI({}, source="<built-in defaults>", auto=None, now=0, node=None).treq
    tc = _tc()
    for url, status in (("http://x/", 200), ("http://x/healthz", 200), ("http://x/server/templates/1", 404)):
        d = treq.get(url, headers={"org_id": "t1"})
        treq.flush()
        assert result(tc, d)[0] == status


class _Finished:
    code = 200
    method = b"GET"
    path = b"/server/object(1)/header"
    uri = b"/server/object(1)/header"
    route_type = "object"
    tenant = "t1"
    cache = "HIT"
    started = 0.0
    sentLength = 2
    client = None
    trace = None


@pytest.mark.parametrize("access_log, lines", [(True, 1), (False, 0)])
def test_access_log_line_follows_the_setting(access_log, lines):
    import os

    from apicache.http.channel import ApiSite
    from apicache.ops.logs import AccessLog

    r, w = os.pipe()
    try:
        # not started: each line is written at once
        site = ApiSite(App().api.resource(), Clock(), None, AccessLog(Clock(), fd=w) if access_log else False)
        site.active = 1
        site.request_done(_Finished())
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        events = [json.loads(line) for line in f]
    access = [e for e in events if e.get("route") == "object"]
    assert len(access) == lines
    if lines:
        assert {k: access[0][k] for k in ("method", "tenant", "status", "cache")} == {
            "method": "GET",
            "tenant": "t1",
            "status": 200,
            "cache": "HIT",
        }
        assert "duration_ms" in access[0]
