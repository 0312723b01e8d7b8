"""
C{server.tenant_claim} on every request that names a tenant (issue 21,
SPEC.md section 4): reads, C{DELETE}, C{PURGE}, tag purges, C{/clear} and
pass-through writes are refused C{403 tenant_mismatch} when the token's
claim is another tenant.  Without C{[auth]} the claim is read from the
unverified token (over StubTreq); with it, from the token the channel
verified (in-process over the wire, L{auth_support.AuthWire}).  The
real daemon's case is in C{tests/test_auth_daemon.py}.
"""

from __future__ import annotations

import json

import pytest
from auth_support import K1, PATH, RSA, WRITE_ROUTES, AuthWire, bearer
from auth_support import unverified_jwt as jwt
from http_support import App, error_of, result
from http_support import sync_case as _tc

from apicache.testing import unsigned_token as unsigned

OBJ = "http://x/server/object(42)/header"

#: (method, URL path) of every kind of request that names a tenant
REQUESTS = [
    ("GET", "/server/object(42)/header"),
    ("HEAD", "/server/object(42)/header"),
    ("DELETE", "/server/object(42)/header"),
    ("PURGE", "/server/object(42)/header"),
    ("DELETE", "/tags/object:42"),
    ("DELETE", "/clear"),
    ("POST", "/server/object(42)/header"),
    ("PUT", "/server/object(42)/header"),
]


def status_and_error(tc, d, method):
    code, headers, body = result(tc, d)
    if method == "HEAD" or not body:
        return code, None
    return code, json.loads(body).get("error")


class TestUnverifiedClaim:
    """Without [auth]: a read-only consistency check, on every method now."""

    @pytest.fixture
    def app(self):
        return App(server={"tenant_claim": "zid"}, routes=WRITE_ROUTES)

    @pytest.mark.parametrize("method, path", REQUESTS)
    def test_another_tenants_claim_is_refused(self, app, method, path):
        headers = {"api-key": "k1", "org_id": "t1", "authorization": jwt({"zid": "t2"})}
        tc = _tc()
        assert status_and_error(tc, app.request(method, "http://x" + path, headers=headers), method) == (
            403,
            None if method == "HEAD" else "tenant_mismatch",
        )
        assert app.upstream.fetched == []

    @pytest.mark.parametrize("method, path", REQUESTS)
    def test_no_token_is_refused(self, app, method, path):
        tc = _tc()
        code, _ = status_and_error(tc, app.request(method, "http://x" + path, headers={"api-key": "k1", "org_id": "t1"}), method)
        assert code == 403

    @pytest.mark.parametrize("method, path", REQUESTS)
    def test_the_tenants_own_claim_is_served(self, app, method, path):
        headers = {"api-key": "k1", "org_id": "t1", "authorization": jwt({"zid": "t1"})}
        code, _ = status_and_error(_tc(), app.request(method, "http://x" + path, headers=headers), method)
        assert code == 200, (method, path)

    def test_a_purge_that_names_no_tenant_has_no_claim_to_check(self, app):
        code, _, body = result(_tc(), app.request("DELETE", "http://x/clear", headers={"api-key": "k1"}))
        assert code == 200 and json.loads(body) == {"invalidated": 0}

    def test_a_purge_with_another_tenants_claim_drops_nothing(self, app):
        t1 = {"api-key": "k1", "org_id": "t1", "authorization": jwt({"zid": "t1"})}
        assert result(_tc(), app.request("GET", OBJ, headers=t1))[0] == 200
        assert app.store.stats()["entries"] == 1
        mallory = {"api-key": "k1", "org_id": "t1", "authorization": jwt({"zid": "t2"})}
        for method, path in REQUESTS[2:6]:
            assert error_of(_tc(), app.request(method, "http://x" + path, headers=mallory)) == (403, "tenant_mismatch")
        assert app.store.stats()["entries"] == 1


class TestVerifiedClaim:
    """With [auth]: the claim of the verified token decides."""

    @pytest.fixture
    def wire(self):
        w = AuthWire(server={"tenant_claim": "zid"}, routes=WRITE_ROUTES)
        yield w
        w.close()

    @pytest.mark.parametrize("method, path", REQUESTS)
    def test_a_verified_token_of_another_tenant_is_refused(self, wire, method, path):
        other = (K1, (b"org_id", b"tenant-b"), bearer(RSA.token(zid="tenant-a")))
        status, fields, body = wire.get(other, path=path.encode(), method=method.encode())
        assert status == 403
        if method != "HEAD":
            assert json.loads(body)["error"] == "tenant_mismatch"
        assert wire.upstream.fetched == []

    @pytest.mark.parametrize("method, path", REQUESTS)
    def test_a_verified_token_of_the_tenant_is_served(self, wire, method, path):
        mine = (K1, (b"org_id", b"tenant-a"), bearer(RSA.token(zid="tenant-a")))
        assert wire.get(mine, path=path.encode(), method=method.encode())[0] == 200

    def test_an_unverified_token_with_the_right_claim_is_401_not_a_pass(self, wire):
        forged = unsigned(RSA.kid, {"zid": "tenant-a", "exp": 2_000_000_000})
        status, fields, _ = wire.get((K1, (b"org_id", b"tenant-a"), bearer(forged)), method=b"DELETE", path=b"/clear")
        assert (status, fields[b"www-authenticate"]) == (401, b'Bearer error="invalid_token"')

    def test_an_integer_claim_compares_as_text(self, wire):
        mine = (K1, (b"org_id", b"42"), bearer(RSA.token(zid=42)))
        assert wire.get(mine, path=PATH)[0] == 200
