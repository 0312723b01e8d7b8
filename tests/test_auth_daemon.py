"""
Verified tenants through the real daemon (issue 21): C{twistd -n apicache}
with C{[auth] jwks} naming a key set file (or a loopback JWKS server), tokens
signed with keys generated here.  A token is accepted; a forged one (another
key under the same kid), an expired one, an unsigned one and none at all
are refused 401 with their C{WWW-Authenticate} challenge; a key added to the
file is picked up by the first token naming it; C{/readyz} names C{jwks}
until a key set loads; C{tenant_mismatch} stops a purge of another tenant.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from apicache.harness.polling import wait_until
from apicache.testing import TokenSigner as Signer
from apicache.testing import token_claims as claims_of
from apicache.testing import unsigned_token as unsigned
from apicache.testing import write_jwks

pytestmark = pytest.mark.integration

OBJ = "/server/object({})/header"
RSA = Signer("RS256", "daemon-rsa")
FORGER = Signer("RS256", "daemon-rsa")
ROTATED = Signer("ES256", "daemon-ec")
ISSUER = "https://idp.example/realms/acme"


def token(signer: Signer, tenant: str = "acme", **claims: Any) -> str:
    now = int(time.time())
    fields: dict[str, Any] = {"iss": ISSUER, "aud": "apicache", "zid": tenant, "iat": now, "exp": now + 600}
    fields.update(claims)
    return signer.token(**fields).decode()


def headers(tenant: str = "acme", bearer: str | None = None) -> dict[str, str]:
    h = {"org_id": tenant}
    if bearer is not None:
        h["authorization"] = f"Bearer {bearer}"
    return h


def metric(d: Any, line: str) -> float:
    text = d.request("GET", "/metrics").body.decode()
    m = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
    assert m, line
    return float(m.group(1))


def auth_config(jwks: str) -> dict[str, Any]:
    return {
        "server": {"tenant_claim": "zid", "access_log": False},
        "auth": {"jwks": jwks, "issuers": [ISSUER], "audiences": ["apicache"]},
    }


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    write_jwks(path, RSA.jwk())
    return path


def test_tokens_accepted_and_refused_through_the_daemon(make_daemon, key_file):
    d = make_daemon(auth_config(str(key_file)))
    good = token(RSA)
    r = d.request("GET", OBJ.format(1), headers(bearer=good))
    assert (r.status, r.cache) == (200, "MISS")
    assert d.request("GET", OBJ.format(1), headers(bearer=good)).cache == "HIT"

    forged = token(FORGER)
    expired = token(RSA, exp=int(time.time()) - 120, iat=int(time.time()) - 900)
    none_alg = unsigned(RSA.kid, claims_of(good.encode())).decode()
    for bad in (forged, expired, none_alg):
        r = d.request("GET", OBJ.format(1), headers(bearer=bad))
        assert (r.status, r.json()["error"]) == (401, "invalid_token")
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    r = d.request("GET", OBJ.format(1), headers())
    assert (r.status, r.headers["www-authenticate"]) == (401, "Bearer")

    assert metric(d, 'apicache_auth_failures_total{reason="bad_signature"}') == 1
    assert metric(d, 'apicache_auth_failures_total{reason="expired"}') == 1
    assert metric(d, 'apicache_auth_failures_total{reason="algorithm"}') == 1
    assert metric(d, 'apicache_auth_failures_total{reason="missing"}') == 1
    assert metric(d, "apicache_jwks_keys") == 1
    assert metric(d, "apicache_jwks_refresh_failures_total") == 0
    assert d.request("GET", "/readyz").json() == {"ready": True}
    # a token never reaches the log
    assert good.split(".")[2] not in d.logs() and forged.split(".")[2] not in d.logs()


def test_a_key_added_to_the_file_is_picked_up_by_the_first_token_naming_it(make_daemon, key_file):
    d = make_daemon(auth_config(str(key_file)))
    assert d.request("GET", OBJ.format(1), headers(bearer=token(RSA))).status == 200
    write_jwks(key_file, RSA.jwk(), ROTATED.jwk())
    r = d.request("GET", OBJ.format(2), headers(bearer=token(ROTATED)))
    assert (r.status, r.cache) == (200, "MISS")
    assert metric(d, "apicache_jwks_keys") == 2
    # a kid still unknown after that read is refused
    r = d.request("GET", OBJ.format(2), headers(bearer=token(Signer("ES256", "nobody"))))
    assert (r.status, r.json()["error"]) == (401, "invalid_token")
    assert metric(d, 'apicache_auth_failures_total{reason="unknown_kid"}') == 1


@pytest.mark.slow
def test_readyz_names_jwks_until_a_key_set_has_loaded(make_daemon, tmp_path):
    missing = tmp_path / "later.json"
    d = make_daemon(auth_config(str(missing)))
    r = d.request("GET", "/readyz")
    assert (r.status, r.json()) == (503, {"ready": False, "failing": ["jwks"]})
    assert d.request("GET", OBJ.format(1), headers(bearer=token(RSA))).status == 401
    # long enough failing that a plain doubling backoff would wait 8 s more
    time.sleep(8)
    write_jwks(missing, RSA.jwk())
    # SPEC: /readyz follows a change within 5 s (a real daemon, a real clock)
    wait_until(lambda: d.request("GET", "/readyz").status == 200, 5.0, 0.2, "/readyz to say ready")
    assert metric(d, "apicache_jwks_refresh_failures_total") >= 1
    assert d.request("GET", OBJ.format(1), headers(bearer=token(RSA))).status == 200


def test_a_purge_with_another_tenants_token_is_refused(make_daemon, key_file, upstream):
    d = make_daemon(auth_config(str(key_file)))
    globex = token(RSA, tenant="globex")
    assert d.request("GET", OBJ.format(7), headers("globex", globex)).cache == "MISS"
    acme = token(RSA, tenant="acme")
    for method, path in (("DELETE", "/clear"), ("PURGE", OBJ.format(7)), ("DELETE", "/tags/object:7")):
        r = d.request(method, path, headers("globex", acme))
        assert (r.status, r.json()["error"]) == (403, "tenant_mismatch"), (method, path)
    r = d.request("DELETE", "/clear", headers("globex", globex))
    assert (r.status, r.json()) == (200, {"invalidated": 1})


class _KeySetHandler(BaseHTTPRequestHandler):
    body = b"{}"
    delay = 0.0

    def do_GET(self) -> None:  # noqa: N802
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("content-type", "application/jwk-set+json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_unknown_kid_waits_for_a_loopback_jwks_server(make_daemon):
    handler = type("Handler", (_KeySetHandler,), {"body": json.dumps({"keys": [RSA.jwk()]}).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        d = make_daemon(auth_config(f"http://127.0.0.1:{server.server_port}/realms/acme/certs"))
        assert d.request("GET", OBJ.format(1), headers(bearer=token(RSA))).status == 200
        # the provider rotates, and answers slowly: the request waits for it
        handler.body = json.dumps({"keys": [ROTATED.jwk()]}).encode()
        handler.delay = 0.5
        started = time.monotonic()
        r = d.request("GET", OBJ.format(2), headers(bearer=token(ROTATED)))
        assert (r.status, r.cache) == (200, "MISS")
        assert time.monotonic() - started >= 0.5
        assert metric(d, "apicache_jwks_keys") == 1
    finally:
        server.shutdown()
        server.server_close()


def test_the_demo_shows_a_token_accepted_and_a_forged_one_refused(tmp_path):
    """C{make demo-auth}'s script, as the README describes it."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "APICACHE_API_KEY": "demo-test-key", "TMPDIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "demo_auth.py")],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout
    assert text.count("HTTP/1.1 200 OK") == 2 and "x-cache: HIT" in text
    assert 'www-authenticate: Bearer error="invalid_token"' in text
    assert "www-authenticate: Bearer\n" in text
    assert text.count("HTTP/1.1 403 Forbidden") == 2 and "tenant_mismatch" in text
    assert 'apicache_auth_failures_total{reason="bad_signature"} 1.0' in text
    # the tokens themselves are shown as $TOKEN, never in full
    assert "Bearer $TOKEN" in text and "Bearer ey" not in text
