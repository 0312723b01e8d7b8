"""
The server plumbing in-process (apicache.http.channel): a real ApiSite over a
StringTransport, with a real registry, memory store, fake upstream and a
task.Clock.  The checks made before routing and the fast hit path are
exercised here on the bytes of the wire, without a daemon.
"""

from __future__ import annotations

import base64
import json

import pytest
from twisted.python.failure import Failure

from apicache.testing import OBJECT_BODY, OBJECT_ROUTE
from apicache.testing import InMemoryAPI as Wire
from apicache.testing import parse_response as parse

ROUTES = [OBJECT_ROUTE]
PATH = b"/server/object(42)/header"
BODY = OBJECT_BODY


def error(answer):
    status, fields, body = answer
    assert fields[b"content-type"] == b"application/json"
    return status, json.loads(body)["error"]


@pytest.fixture
def wire():
    w = Wire()
    status, fields, _ = w.get()
    assert (status, fields[b"x-cache"]) == (200, b"MISS")
    return w


K1 = (b"api-key", b"k1")
T1 = (b"org_id", b"t1")


def test_a_hit_is_answered_before_klein(wire):
    before = wire.klein.calls
    status, fields, body = wire.get()
    assert (status, fields[b"x-cache"], body) == (200, b"HIT", BODY)
    assert fields[b"content-length"] == b"%d" % len(BODY)
    assert fields[b"age"] == b"0"
    assert fields[b"etag"] == b'"e"'
    assert b"date" in fields
    assert wire.klein.calls == before
    assert len(wire.upstream.fetched) == 1


def test_miss_and_hit_are_written_alike(wire):
    """The one writer: a miss carries the same stored headers as a hit."""
    w = Wire()
    _, miss, miss_body = w.get()
    _, hit, hit_body = w.get()
    assert miss_body == hit_body == BODY
    assert {k: v for k, v in miss.items() if k not in (b"x-cache", b"age", b"cache-status")} == {
        k: v for k, v in hit.items() if k not in (b"x-cache", b"age", b"cache-status")
    }
    assert b"age" not in miss


def test_age_counts_from_the_fetch(wire):
    wire.clock.advance(7.5)
    assert wire.get()[1][b"age"] == b"7"


@pytest.mark.parametrize(
    "headers, expected",
    [
        ((K1, K1, T1), (400, "duplicate_header")),
        ((K1, T1, T1), (400, "duplicate_header")),
        ((T1,), (401, "unauthorized")),
        (((b"api-key", b"k2"), T1), (401, "unauthorized")),
        ((K1,), (400, "missing_tenant")),
        ((K1, (b"org_id", b"t 1")), (400, "invalid_tenant")),
        ((K1, (b"org_id", b"t\xe91")), (400, "invalid_tenant")),
        ((K1, (b"org_id", b"")), (400, "invalid_tenant")),
        ((K1, (b"org_id", b"t" * 129)), (400, "invalid_tenant")),
    ],
)
def test_header_checks_hold_when_the_answer_is_cached(wire, headers, expected):
    assert error(wire.get(headers=headers)) == expected


@pytest.mark.parametrize("path", [b"/server/object(..%2Fx)/header", b"/server/object(a%00b)/header", b"/server/object()/header"])
def test_a_rejected_parameter_is_refused_every_time(wire, path):
    assert error(wire.get(path)) == (400, "invalid_parameter")
    assert error(wire.get(path)) == (400, "invalid_parameter")


def test_a_path_that_is_not_utf8_is_a_json_invalid_parameter(wire):
    assert error(wire.get(b"/server/object(%ff)/header")) == (400, "invalid_parameter")


def test_a_path_that_is_not_utf8_without_routes_is_no_route():
    assert error(Wire(routes=[]).get(b"/x/%ff")) == (404, "no_route")


def test_a_long_query_is_invalid_even_after_a_hit(wire):
    assert error(wire.get(PATH + b"?q=" + b"a" * 2100)) == (400, "invalid_query")


def test_an_unknown_path_is_no_route(wire):
    assert error(wire.get(b"/nowhere")) == (404, "no_route")


def test_reserved_paths_win_over_the_hit_path(wire):
    status, _, body = wire.get(b"/")
    assert (status, json.loads(body)["service"]) == (200, "apicache")
    assert wire.get(b"/healthz", headers=())[0] == 200
    assert error(wire.get(b"/", headers=(K1, T1), method=b"POST")) == (405, "method_not_allowed")


def test_head_gets_the_hit_without_a_body(wire):
    status, fields, body = wire.get(method=b"HEAD")
    assert (status, fields[b"x-cache"], body) == (200, b"HIT", b"")
    assert fields[b"content-length"] == b"%d" % len(BODY)


def test_head_of_a_miss_has_no_body():
    status, fields, body = Wire().get(method=b"HEAD")
    assert (status, fields[b"x-cache"], body) == (200, b"MISS", b"")
    assert fields[b"content-length"] == b"%d" % len(BODY)


def test_other_methods_are_not_allowed(wire):
    assert error(wire.get(method=b"POST")) == (405, "method_not_allowed")


def jwt(claims):
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return b"Bearer h." + part + b".s"


def test_a_claim_mismatch_is_refused_when_the_answer_is_cached():
    w = Wire(server={"tenant_claim": "zid"})
    good = (K1, T1, (b"authorization", jwt({"zid": "t1"})))
    assert w.get(headers=good)[1][b"x-cache"] == b"MISS"
    assert w.get(headers=good)[1][b"x-cache"] == b"HIT"
    assert error(w.get(headers=(K1, T1, (b"authorization", jwt({"zid": "t2"}))))) == (403, "tenant_mismatch")
    assert error(w.get(headers=(K1, T1))) == (403, "tenant_mismatch")


def test_http_1_0_hit_closes_the_connection(wire):
    out, transport = wire.raw(b"GET " + PATH + b" HTTP/1.0\r\napi-key: k1\r\norg_id: t1\r\n\r\n")
    status, fields, body = parse(out)
    assert out.startswith(b"HTTP/1.0 200 OK\r\n")
    assert (fields[b"x-cache"], body) == (b"HIT", BODY)
    assert transport.disconnecting


def test_pipelined_hits_are_answered_in_order(wire):
    get = b"GET " + PATH + b" HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\n\r\n"
    out, transport = wire.raw(get + get + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answers = out.split(b"HTTP/1.1 200 OK\r\n")
    assert len(answers) == 4 and answers[0] == b""
    for a in answers[1:3]:
        assert b"X-Cache: HIT\r\n" in a and a.endswith(b"\r\n\r\n" + BODY)
    assert b'"status": "ok"' in answers[3]
    assert transport.disconnecting


def test_connections_are_tracked_and_closed_on_request():
    w = Wire()
    protocol, transport = w.connect()
    assert w.site.connections == {transport}
    d = w.site.close_connections()
    assert transport.disconnecting
    assert not d.called
    protocol.connectionLost(Failure(ConnectionError("closed")))
    assert w.site.connections == set()
    assert d.called
    assert w.site.close_connections().called


def test_when_idle_waits_for_the_request_in_flight():
    w = Wire()
    w.upstream.auto = None
    protocol, transport = w.connect()
    protocol.dataReceived(b"GET " + PATH + b" HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\n\r\n")
    assert w.site.active == 1
    idle = w.site.when_idle()
    assert not idle.called
    w.upstream.pending[0].respond(body=BODY)
    assert idle.called and w.site.active == 0
    assert parse(transport.value())[1][b"x-cache"] == b"MISS"
