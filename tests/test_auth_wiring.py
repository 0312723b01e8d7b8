"""
Verified tenants wired into the server (issue 21, SPEC.md sections 2
C{[auth]} and 4): a real L{ApiSite} over a StringTransport with a real
L{TokenVerifier} and L{JWKSSource} (a key set file, or an in-memory HTTP
agent serving one), a real registry and memory store, a fake upstream and a
task.Clock (L{auth_support.AuthWire}).  What is checked is what reaches the
wire: the 401's challenge, that no body byte is read and no C{100 Continue}
sent before the token verifies, and that a request whose key is not known
yet waits for the key set without parsing anything more of its connection.
"""

from __future__ import annotations

import json

import pytest
from auth_support import K1, LATER, NOW, OTHER, PATH, RSA, T1, WRITE_ROUTES, AuthWire, bearer
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from apicache.auth.tokens import REASONS
from apicache.ops.metrics import auth_families
from apicache.testing import OBJECT_BODY as BODY
from apicache.testing import hmac_token as hmac_signed
from apicache.testing import parse_response as parse
from apicache.testing import token_claims as claims_of
from apicache.testing import unsigned_token as unsigned


@pytest.fixture
def wire():
    w = AuthWire()
    yield w
    w.close()


def refusal(answer: tuple[int, dict[bytes, bytes], bytes]) -> tuple[int, str, bytes | None]:
    status, fields, body = answer
    return status, json.loads(body)["error"], fields.get(b"www-authenticate")


def test_a_verified_token_is_served_and_remembered(wire):
    headers = (K1, T1, bearer(RSA.token()))
    status, fields, body = wire.get(headers)
    assert (status, fields[b"x-cache"], body) == (200, b"MISS", BODY)
    assert wire.get(headers)[1][b"x-cache"] == b"HIT"
    # the second request cost no signature check: the verified token is remembered
    assert wire.verifier.signature_checks == 1 and wire.verifier.cache_hits == 1


def test_no_token_is_refused_with_a_bare_challenge(wire):
    assert refusal(wire.get((K1, T1))) == (401, "invalid_token", b"Bearer")
    assert refusal(wire.get((K1, T1, (b"authorization", b"Basic YTpi")))) == (401, "invalid_token", b"Bearer")
    assert wire.verifier.failures["missing"] == 2
    assert wire.upstream.fetched == [] and wire.klein.calls == 0


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: OTHER.token(), "bad_signature"),
        (lambda: RSA.token(exp=int(NOW) - 31), "expired"),
        (lambda: RSA.token(nbf=int(NOW) + 31), "not_yet_valid"),
        (lambda: RSA.token(iss="https://elsewhere"), "issuer"),
        (lambda: RSA.token(aud="someone-else"), "audience"),
        (lambda: unsigned(RSA.kid, claims_of(RSA.token())), "algorithm"),
        (lambda: hmac_signed(RSA.public_pem(), {"alg": "HS256", "kid": RSA.kid}, claims_of(RSA.token())), "algorithm"),
        (lambda: b"not.a.jwt", "malformed"),
    ],
)
def test_a_refused_token_gets_a_challenge_saying_invalid_token(wire, make, reason):
    assert refusal(wire.get((K1, T1, bearer(make())))) == (401, "invalid_token", b'Bearer error="invalid_token"')
    assert wire.verifier.failures[reason] == 1
    assert wire.upstream.fetched == [] and wire.klein.calls == 0


def test_a_token_just_inside_the_leeway_is_accepted(wire):
    assert wire.get((K1, T1, bearer(RSA.token(exp=int(NOW) - 29))))[0] == 200


def test_the_api_key_is_checked_before_the_token(wire):
    assert refusal(wire.get((T1, bearer(OTHER.token()))))[:2] == (401, "unauthorized")
    assert sum(wire.verifier.failures.values()) == 0


def test_head_is_refused_without_a_body(wire):
    status, fields, body = wire.get((K1, T1), method=b"HEAD")
    assert (status, body, fields[b"www-authenticate"]) == (401, b"", b"Bearer")


@pytest.mark.parametrize(
    "method, path",
    [
        (b"DELETE", PATH),
        (b"PURGE", PATH),
        (b"DELETE", b"/tags/object:42"),
        (b"DELETE", b"/clear"),
        (b"POST", PATH),
        (b"GET", b"/server/object(nope)/nothing"),
    ],
)
def test_every_request_naming_a_tenant_needs_a_token(method, path):
    w = AuthWire(routes=WRITE_ROUTES)
    try:
        assert refusal(w.get((K1, T1), path=path, method=method)) == (401, "invalid_token", b"Bearer")
        status = w.get((K1, T1, bearer(RSA.token())), path=path, method=method)[0]
        assert status in (200, 404), (method, path)
    finally:
        w.close()


@pytest.mark.parametrize("path", [b"/healthz", b"/readyz", b"/metrics", b"/"])
def test_what_names_no_tenant_needs_no_token(wire, path):
    assert wire.get((K1, T1), path=path)[0] == 200


def test_a_purge_of_every_tenant_needs_no_token(wire):
    # no tenant header: guarded by the admin key rules, not by a token
    assert wire.get((K1,), method=b"DELETE")[0] == 200
    assert wire.get((K1,), path=b"/clear", method=b"DELETE")[0] == 200


def test_no_body_byte_is_read_and_no_100_continue_sent_before_the_token_verifies():
    w = AuthWire(routes=WRITE_ROUTES)
    try:
        head = w.head((K1, T1, bearer(OTHER.token()), (b"content-length", b"5"), (b"expect", b"100-continue")), method=b"POST")
        protocol, transport = w.send(head)
        out = transport.value()
        assert b"100 Continue" not in out
        assert refusal(parse(out)) == (401, "invalid_token", b'Bearer error="invalid_token"')
        assert transport.disconnecting
        protocol.dataReceived(b"hello")
        assert w.upstream.fetched == [] and w.klein.calls == 0
        # a verified writer gets its 100 Continue and its body forwarded
        head = w.head((K1, T1, bearer(RSA.token()), (b"content-length", b"5"), (b"expect", b"100-continue")), method=b"POST")
        protocol, transport = w.send(head)
        assert transport.value().startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        protocol.dataReceived(b"hello")
        assert [f.body for f in w.upstream.fetched] == [b"hello"]
    finally:
        w.close()


def test_an_unknown_kid_waits_for_the_key_set_without_reading_further():
    w = AuthWire(jwks="http")
    try:
        assert w.source.key_count == 1
        w.keyset.body = json.dumps({"keys": [RSA.jwk(), LATER.jwk()]}).encode()
        w.keyset.hold = True
        first = w.head((K1, T1, bearer(LATER.token())))
        second = w.head((K1, T1, bearer(RSA.token())), path=b"/server/object(43)/header")
        protocol, transport = w.send(first + second)
        # nothing answered, nothing of the pipelined request parsed, reading paused
        assert transport.value() == b"" and w.klein.calls == 0
        assert transport.producerState == "paused"
        assert w.upstream.fetched == []
        w.flush()  # the key set arrives
        assert transport.producerState == "producing"
        out = transport.value()
        assert out.count(b"HTTP/1.1 200 OK") == 2 and out.count(b"x-cache: MISS") + out.count(b"X-Cache: MISS") == 2
        assert [f.path for f in w.upstream.fetched] == ["/object(42)/header", "/object(43)/header"]
        assert w.source.key_count == 2 and w.keyset.requests == 2
    finally:
        w.close()


def test_an_unknown_kid_still_unknown_after_the_read_is_refused():
    w = AuthWire(jwks="http")
    try:
        w.keyset.hold = True
        protocol, transport = w.send(w.head((K1, T1, bearer(LATER.token())), method=b"POST", path=PATH))
        assert transport.value() == b""
        w.flush()
        assert refusal(parse(transport.value())) == (401, "invalid_token", b'Bearer error="invalid_token"')
        assert w.verifier.failures["unknown_kid"] == 1
        # a second unknown kid within 10 s is refused at once, without a read
        assert refusal(w.get((K1, T1, bearer(LATER.token(jti="2")))))[0] == 401
        assert w.keyset.requests == 2
    finally:
        w.close()


def test_a_connection_lost_while_waiting_is_forgotten():
    w = AuthWire(jwks="http")
    try:
        w.keyset.body = json.dumps({"keys": [RSA.jwk(), LATER.jwk()]}).encode()
        w.keyset.hold = True
        protocol, transport = w.send(w.head((K1, T1, bearer(LATER.token()))))
        protocol.connectionLost(Exception("gone"))  # type: ignore[arg-type]
        w.flush()
        assert transport.value() == b"" and w.upstream.fetched == []
    finally:
        w.close()


def test_the_front_checks_tokens_of_requests_that_skip_the_channel(wire):
    """StubTreq and other ways in: the same check in front of the API."""
    stub = StubTreq(wire.api.resource())
    url = "http://x" + PATH.decode()
    tc = SynchronousTestCase()
    r = tc.successResultOf(stub.get(url, headers={"api-key": "k1", "org_id": "tenant-a"}))
    assert r.code == 401 and r.headers.getRawHeaders("www-authenticate") == ["Bearer"]
    r = tc.successResultOf(
        stub.get(url, headers={"api-key": "k1", "org_id": "tenant-a", "authorization": "Bearer " + RSA.token().decode()})
    )
    assert r.code == 200


def test_auth_metrics_name_every_reason(wire):
    wire.get((K1, T1))
    families = {f.name: f for f in auth_families(wire.verifier.failures, wire.source.key_count, wire.source.refresh_failures)}
    samples = {s.labels["reason"]: s.value for s in families["apicache_auth_failures"].samples if s.name.endswith("_total")}
    assert set(samples) == set(REASONS) and samples["missing"] == 1
    assert families["apicache_jwks_keys"].samples[0].value == 1



def test_a_keep_alive_connection_changing_its_token_is_checked_again(wire):
    """The connection's memo of its last token never stands in for a check."""
    protocol, transport = wire.connect()
    good = wire.head((K1, T1, bearer(RSA.token())))
    protocol.dataReceived(good)
    protocol.dataReceived(good)
    assert transport.value().count(b"200 OK") == 2
    assert wire.verifier.signature_checks == 1 and wire.verifier.cache_hits == 1
    transport.clear()
    protocol.dataReceived(wire.head((K1, T1, bearer(OTHER.token()))))
    assert refusal(parse(transport.value())) == (401, "invalid_token", b'Bearer error="invalid_token"')
    assert wire.verifier.failures["bad_signature"] == 1


def test_a_remembered_token_that_expires_on_a_keep_alive_connection_is_refused(wire):
    protocol, transport = wire.connect()
    request = wire.head((K1, T1, bearer(RSA.token(exp=int(NOW) + 60))))
    protocol.dataReceived(request)
    assert transport.value().count(b"200 OK") == 1
    wire.clock.advance(91)  # past exp and the 30 s leeway
    transport.clear()
    protocol.dataReceived(request)
    assert refusal(parse(transport.value())) == (401, "invalid_token", b'Bearer error="invalid_token"')
    assert wire.verifier.failures["expired"] == 1
