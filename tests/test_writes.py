"""
Pass-through writes, DELETE and PURGE, and 405 with Allow (SPEC.md section
4) over StubTreq: the Klein resource with a real registry and memory store,
the shared fake upstream and a task.Clock.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from apicache.cache.policy import normalise_accept_encoding, replayed_headers
from apicache.config import parse_config
from apicache.http.passthrough import invalidates, route_tags
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream, InMemoryAPI
from apicache.upstream.client import Overloaded, UpstreamResponse, UpstreamTimeout, UpstreamUnreachable

ROUTES = [
    {
        "type": "object",
        "path": "/server/object(<id>)/header",
        "upstream": "/object({id})/header",
        "ttl": 10,
        "pass_methods": ["POST", "PUT", "PATCH", "DELETE"],
        "tags": ["object:{id}"],
    },
    {"type": "template", "path": "/server/templates/<id>", "upstream": "/templates/{id}", "ttl": 10},
]
KEY = {"api-key": "k1"}
T1 = {**KEY, "org_id": "t1"}
T2 = {**KEY, "org_id": "t2"}
OBJ = "http://x/server/object(42)/header"
TPL = "http://x/server/templates/7"


FORWARDED = {"forward_headers": ["authorization", "accept"]}


def answer(path, headers):
    return UpstreamResponse(200, [(b"content-type", b"application/json")], json.dumps({"path": path}).encode())


class App(InMemoryAPI):
    """The API in memory with this module's routes, forwarding C{authorization} and C{accept}."""

    def __init__(self, server=None, routes=ROUTES, upstream_settings=FORWARDED, **options):
        super().__init__(server=server, routes=routes, upstream_settings=upstream_settings, auto=answer, **options)

    def write_answers(self, status, headers=(), body=b""):
        """Answer writes with ``status``; reads as usual."""

        def auto(path, h):
            if self.upstream.fetched[-1].method == b"GET":
                return answer(path, h)
            return UpstreamResponse(status, list(headers), body)

        self.upstream.auto = auto

    def fill(self, tc, url=OBJ, headers=T1):
        """GET ``url`` twice: a MISS that stores, then a HIT."""
        assert x_cache(tc, self.request("GET", url, headers=headers)) == "MISS"
        assert x_cache(tc, self.request("GET", url, headers=headers)) == "HIT"


def result(tc, d):
    r = tc.successResultOf(d)
    return r.code, r.headers, tc.successResultOf(r.content())


def x_cache(tc, d):
    return result(tc, d)[1].getRawHeaders("x-cache", [None])[0]


def error_of(tc, d):
    code, headers, body = result(tc, d)
    return code, json.loads(body)["error"], headers


class TestPassThrough(SynchronousTestCase):
    def test_write_is_forwarded_with_body_and_headers(self):
        app = App()
        app.write_answers(201, [(b"content-type", b"application/json"), (b"location", b"/x/1")], b'{"id": 1}')
        headers = {
            **T1,
            "authorization": "Bearer t",
            "content-type": "application/json",
            "if-match": '"v1"',
            "if-none-match": '"v0"',
            "if-unmodified-since": "Sat, 01 Jan 2000 00:00:00 GMT",
            "cookie": "not=forwarded",
            "accept-encoding": "gzip, br",
            "tracestate": "v=1",
        }
        code, h, body = result(self, app.request("POST", OBJ + "?b=2&a=1", headers=headers, data=b'{"name": "n"}'))
        self.assertEqual((code, body), (201, b'{"id": 1}'))
        sent = app.upstream.fetched[-1]
        self.assertEqual((sent.method, sent.path, sent.body), (b"POST", "/object(42)/header?a=1&b=2", b'{"name": "n"}'))
        names = dict(sent.headers)
        self.assertEqual(names[b"authorization"], b"Bearer t")
        self.assertEqual(names[b"content-type"], b"application/json")
        self.assertEqual(names[b"if-match"], b'"v1"')
        self.assertEqual(names[b"if-none-match"], b'"v0"')
        self.assertEqual(names[b"if-unmodified-since"], b"Sat, 01 Jan 2000 00:00:00 GMT")
        self.assertEqual(names[b"accept-encoding"], b"gzip")
        self.assertEqual(names[b"tracestate"], b"v=1")
        self.assertNotIn(b"cookie", names)
        self.assertNotIn(b"org_id", names)
        self.assertEqual(h.getRawHeaders("x-cache"), ["MISS"])
        self.assertEqual(h.getRawHeaders("cache-status"), ["apicache;fwd=method"])
        self.assertEqual(h.getRawHeaders("location"), ["/x/1"])

    def test_answer_is_filtered_and_never_stored(self):
        """
        SPEC.md section 3 (v3): Set-Cookie is passed on in pass-through
        writes (a login keeps its cookie), never stored; the fields the
        upstream's Connection names are not (RFC 9110 section 7.6.1).
        """
        app = App()
        app.write_answers(
            200,
            [
                (b"content-type", b"text/plain"),
                (b"set-cookie", b"s=1"),
                (b"connection", b"x-hop"),
                (b"x-hop", b"1"),
                (b"x-total-count", b"3"),
                (b"cache-status", b"origin; hit"),
                (b"cache-control", b"max-age=60"),
            ],
            b"done",
        )
        for _ in range(2):
            code, h, body = result(self, app.request("PUT", OBJ, headers=T1, data=b"x"))
            self.assertEqual((code, body), (200, b"done"))
            self.assertEqual(h.getRawHeaders("set-cookie"), ["s=1"])
            self.assertIsNone(h.getRawHeaders("x-hop"))
            self.assertEqual(h.getRawHeaders("x-total-count"), ["3"])
            # apicache's member comes after the upstream's (one list, RFC 9110 section 5.3)
            self.assertEqual(", ".join(h.getRawHeaders("cache-status")), "origin; hit, apicache;fwd=method")
        self.assertEqual([f.method for f in app.upstream.fetched], [b"PUT", b"PUT"])
        self.assertEqual(app.store.stats()["entries"], 0)

    def test_patch_invalidates_the_tenants_entries_then_the_next_get_is_a_miss(self):
        app = App()
        app.fill(self)
        app.fill(self, OBJ + "?v=2")
        app.fill(self, headers=T2)
        app.write_answers(200, [(b"content-type", b"application/json")], b"{}")
        code, _, _ = result(self, app.request("PATCH", OBJ, headers=T1, data=b"{}"))
        self.assertEqual(code, 200)
        self.assertEqual(x_cache(self, app.request("GET", OBJ, headers=T1)), "MISS")
        self.assertEqual(x_cache(self, app.request("GET", OBJ + "?v=2", headers=T1)), "MISS")
        # another tenant's entries stay
        self.assertEqual(x_cache(self, app.request("GET", OBJ, headers=T2)), "HIT")

    def test_statuses_that_invalidate(self):
        for status in (200, 201, 204, 301, 303, 404, 410):
            app = App()
            app.fill(self)
            app.write_answers(status)
            self.assertEqual(result(self, app.request("POST", OBJ, headers=T1))[0], status)
            self.assertEqual(x_cache(self, app.request("GET", OBJ, headers=T1)), "MISS", status)

    def test_statuses_that_leave_entries(self):
        for status in (400, 401, 403, 409, 412, 422, 500, 503):
            app = App()
            app.fill(self)
            app.write_answers(status)
            self.assertEqual(result(self, app.request("POST", OBJ, headers=T1))[0], status)
            self.assertEqual(x_cache(self, app.request("GET", OBJ, headers=T1)), "HIT", status)

    def test_an_answer_lost_after_sending_invalidates(self):
        for error, status in ((UpstreamUnreachable("reset"), 502), (UpstreamTimeout("slow"), 504)):
            app = App()
            app.fill(self)

            def auto(path, h, error=error, app=app):
                if app.upstream.fetched[-1].method == b"GET":
                    return answer(path, h)
                raise error

            app.upstream.auto = auto
            code, _, _ = error_of(self, app.request("POST", OBJ, headers=T1))
            self.assertEqual(code, status)
            self.assertEqual(x_cache(self, app.request("GET", OBJ, headers=T1)), "MISS")

    def test_a_write_never_sent_leaves_entries(self):
        app = App()
        app.fill(self)
        unsent = UpstreamUnreachable("refused")
        unsent.sent = False

        def auto(path, h):
            if app.upstream.fetched[-1].method == b"GET":
                return answer(path, h)
            raise unsent

        app.upstream.auto = auto
        self.assertEqual(error_of(self, app.request("POST", OBJ, headers=T1))[:2], (502, "upstream_unreachable"))
        self.assertEqual(x_cache(self, app.request("GET", OBJ, headers=T1)), "HIT")
        app.upstream.max_in_flight = 0
        self.assertEqual(error_of(self, app.request("POST", OBJ, headers=T1))[:2], (503, "overloaded"))
        self.assertTrue(Overloaded.sent is False)

    def test_a_fetch_in_flight_during_a_write_is_not_stored(self):
        app = App()
        app.upstream.auto = None
        get = app.request("GET", OBJ, headers=T1)
        write = app.request("POST", OBJ, headers=T1, data=b"x")
        read, posted = app.upstream.pending
        self.assertEqual((read.method, posted.method), (b"GET", b"POST"))
        posted.respond(204, b"")
        app.treq.flush()
        self.assertEqual(result(self, write)[0], 204)
        read.respond(200, b"old")
        app.treq.flush()
        self.assertEqual(result(self, get)[2], b"old")
        self.assertEqual(app.store.stats()["entries"], 0)

    def test_writes_are_not_coalesced(self):
        app = App()
        app.upstream.auto = None
        first = app.request("POST", OBJ, headers=T1, data=b"1")
        second = app.request("POST", OBJ, headers=T1, data=b"2")
        self.assertEqual([p.body for p in app.upstream.pending], [b"1", b"2"])
        for p in list(app.upstream.pending):
            p.respond(201, b"ok")
        app.treq.flush()
        self.assertEqual([result(self, d)[0] for d in (first, second)], [201, 201])

    def test_a_write_needs_a_tenant(self):
        app = App()
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            self.assertEqual(error_of(self, app.request(method, OBJ, headers=KEY))[:2], (400, "missing_tenant"))
        self.assertEqual(app.upstream.fetched, [])

    def test_the_api_key_is_checked_before_anything_is_forwarded(self):
        app = App()
        code, err, _ = error_of(self, app.request("POST", OBJ, headers={"org_id": "t1", "api-key": "no"}, data=b"x"))
        self.assertEqual((code, err), (401, "unauthorized"))
        self.assertEqual(app.upstream.fetched, [])

    def test_a_body_over_the_limit_is_refused(self):
        app = App(server={"max_body_bytes": 8})
        code, err, _ = error_of(self, app.request("POST", OBJ, headers=T1, data=b"x" * 9))
        self.assertEqual((code, err), (413, "body_too_large"))
        self.assertEqual(app.upstream.fetched, [])
        app.write_answers(201)
        self.assertEqual(result(self, app.request("POST", OBJ, headers=T1, data=b"x" * 8))[0], 201)
        self.assertEqual(app.upstream.fetched[-1].body, b"x" * 8)

    def test_the_upstreams_date_is_passed_on_else_apicaches(self):
        app = App()
        app.write_answers(201, [(b"date", b"Sun, 06 Nov 1994 08:49:37 GMT")])
        _, h, _ = result(self, app.request("POST", OBJ, headers=T1))
        self.assertEqual(h.getRawHeaders("date"), ["Sun, 06 Nov 1994 08:49:37 GMT"])
        app.write_answers(201)
        _, h, _ = result(self, app.request("POST", OBJ, headers=T1))
        self.assertEqual(h.getRawHeaders("date"), ["Thu, 01 Jan 1970 00:01:40 GMT"])

    def test_upstream_age_is_passed_on(self):
        app = App()
        app.write_answers(200, [(b"age", b"5")])
        _, h, _ = result(self, app.request("POST", OBJ, headers=T1))
        self.assertEqual(h.getRawHeaders("age"), ["5"])

    def test_route_tags_reach_the_tag_hook(self):
        app = App()
        purged = []

        class Invalidator:
            def invalidate(self, tenant, route, params):
                return succeed(0)

            def invalidate_tags(self, tenant, tags, source=""):
                purged.append((tenant, list(tags), source))
                return succeed(1)

        app.api.invalidator = Invalidator()
        app.write_answers(200)
        result(self, app.request("PATCH", OBJ, headers=T1))
        self.assertEqual(purged, [("t1", ["object:42"], "write")])

    def test_a_write_purges_its_route_tags_on_every_route_of_the_tenant(self):
        """A 2xx PATCH drops the tenant's entries of other routes carrying the route's tag."""
        clock = Clock()
        clock.advance(100)
        store = MemoryStore(1 << 20, clock=clock)
        tagged = [(b"content-type", b"application/json"), (b"surrogate-key", b"object:42 object:41")]

        def auto(path, h):
            sent = upstream.fetched[-1]
            if sent.method != b"GET":
                return UpstreamResponse(200, [], b"")
            return UpstreamResponse(200, tagged if path.startswith("/templates/") else [], b"{}")

        upstream = FakeUpstream(auto=auto)
        app = App(
            upstream_settings={"tags_header": "surrogate-key"},
            upstream=upstream,
            store=store,
            clock=clock,
            upstream_config=True,
        )
        registry = app.registry
        for headers in (T1, T2):
            app.fill(self, TPL, headers)
        code, h, _ = result(self, app.request("GET", TPL, headers=T1))
        self.assertIsNone(h.getRawHeaders("surrogate-key"), "the tags header is never replayed")
        code, _, _ = result(self, app.request("PATCH", OBJ, headers=T1, data=b"{}"))
        self.assertEqual(code, 200)
        self.assertEqual(registry.tag_purges["write"], 1)
        self.assertEqual(x_cache(self, app.request("GET", TPL, headers=T1)), "MISS")
        self.assertEqual(x_cache(self, app.request("GET", TPL, headers=T2)), "HIT", "another tenant's tag")


class TestDeleteAndPurge(SynchronousTestCase):
    def test_delete_on_a_forwarding_route_is_forwarded(self):
        app = App()
        app.fill(self)
        app.write_answers(204)
        code, h, _ = result(self, app.request("DELETE", OBJ, headers=T1))
        self.assertEqual(code, 204)
        self.assertEqual(app.upstream.fetched[-1].method, b"DELETE")
        self.assertEqual(h.getRawHeaders("cache-status"), ["apicache;fwd=method"])
        self.assertEqual(x_cache(self, app.request("GET", OBJ, headers=T1)), "MISS")

    def test_tenantless_delete_on_a_forwarding_route_is_refused(self):
        app = App()
        app.fill(self)
        code, err, _ = error_of(self, app.request("DELETE", OBJ, headers=KEY))
        self.assertEqual((code, err), (400, "missing_tenant"))
        self.assertEqual(x_cache(self, app.request("GET", OBJ, headers=T1)), "HIT")

    def test_delete_elsewhere_still_invalidates(self):
        app = App()
        app.fill(self, TPL)
        code, _, body = result(self, app.request("DELETE", TPL, headers=T1))
        self.assertEqual((code, json.loads(body)), (200, {"invalidated": 1}))
        self.assertEqual(len([f for f in app.upstream.fetched if f.method != b"GET"]), 0)

    def test_purge_works_on_every_route_with_or_without_a_tenant(self):
        app = App()
        for url in (OBJ, TPL):
            app.fill(self, url)
            app.fill(self, url, T2)
            code, _, body = result(self, app.request("PURGE", url, headers=T1))
            self.assertEqual((code, json.loads(body)), (200, {"invalidated": 1}))
            self.assertEqual(x_cache(self, app.request("GET", url, headers=T2)), "HIT")
            app.fill(self, url)
            code, _, body = result(self, app.request("PURGE", url, headers=KEY))
            self.assertEqual((code, json.loads(body)), (200, {"invalidated": 2}))
        self.assertEqual([f for f in app.upstream.fetched if f.method != b"GET"], [])


class TestMethodNotAllowed(SynchronousTestCase):
    def test_405_names_the_routes_methods_in_allow(self):
        app = App()
        code, err, h = error_of(self, app.request("POST", TPL, headers=T1))
        self.assertEqual((code, err), (405, "method_not_allowed"))
        self.assertEqual(h.getRawHeaders("allow"), ["GET, HEAD, DELETE, PURGE"])
        routes = [{**ROUTES[0], "pass_methods": ["PATCH"]}]
        app = App(routes=routes)
        code, _, h = error_of(self, app.request("PUT", OBJ, headers=T1))
        self.assertEqual(code, 405)
        self.assertEqual(h.getRawHeaders("allow"), ["GET, HEAD, DELETE, PURGE, PATCH"])
        code, _, h = error_of(self, app.request("OPTIONS", OBJ, headers=T1))
        self.assertEqual(h.getRawHeaders("allow"), ["GET, HEAD, DELETE, PURGE, PATCH"])

    def test_405_on_reserved_paths_names_their_methods(self):
        app = App()
        for method, url, allow in (
            ("POST", "http://x/healthz", "GET, HEAD"),
            ("DELETE", "http://x/", "GET, HEAD"),
            ("PURGE", "http://x/metrics", "GET, HEAD"),
            ("GET", "http://x/clear", "DELETE"),
        ):
            code, err, h = error_of(self, app.request(method, url, headers=T1))
            self.assertEqual((code, err), (405, "method_not_allowed"), url)
            self.assertEqual(h.getRawHeaders("allow"), [allow], url)


class TestPureParts:
    @pytest.mark.parametrize(
        "status, expected",
        [(200, True), (204, True), (302, True), (304, True), (399, True), (404, True), (410, True),
         (400, False), (409, False), (412, False), (500, False), (100, False)],
    )
    def test_invalidating_statuses(self, status, expected):
        """RFC 9111 section 4.4: non-error statuses; SPEC adds 404 and 410."""
        assert invalidates(status) is expected

    def test_replayed_headers_drop_what_spec_never_replays(self):
        headers = [
            (b"content-type", b"a"),
            (b"connection", b"close, x-named"),
            (b"x-named", b"1"),
            (b"keep-alive", b"5"),
            (b"transfer-encoding", b"chunked"),
            (b"set-cookie", b"s"),
            (b"content-length", b"3"),
            (b"age", b"1"),
            (b"alt-svc", b"h3"),
            (b"x-cache", b"HIT"),
            (b"surrogate-key", b"a b"),
            (b"x-secret", b"s"),
            (b"cache-control", b'no-cache="x-field", max-age=1'),
            (b"x-field", b"f"),
            (b"x-bad", b"a\rb"),
            (b"link", b"</a>"),
        ]
        kept = replayed_headers(headers, [b"surrogate-key", b"x-secret"])
        assert kept == ((b"content-type", b"a"), (b"cache-control", b'no-cache="x-field", max-age=1'), (b"link", b"</a>"))

    @pytest.mark.parametrize(
        "given, expected",
        [(None, b"identity"), ([b"gzip"], b"gzip"), ([b"br, gzip;q=0.5"], b"gzip"), ([b"gzip;q=0"], b"identity"),
         ([b"*"], b"gzip"), ([b"*, gzip;q=0"], b"identity"), ([b"br"], b"identity"), ([b"gzip;q=x"], b"identity")],
    )
    def test_accept_encoding_is_gzip_or_identity(self, given, expected):
        assert normalise_accept_encoding(given) == expected

    def test_route_tags_are_filled_with_the_parameters(self):
        config = parse_config({"server": {"allow_anonymous": True}, "upstream": {"base_url": "http://u"}, "routes": ROUTES}, "t", {})
        assert route_tags(config.routes[0], ("42",)) == ["object:42"]
        assert route_tags(config.routes[1], ("7",)) == []
