"""
``make demo-auth``: tenants you can trust, offline (README, "Tenants you can
trust").  Generates a signing key as an identity provider would hold one,
publishes its JSON Web Key Set in a file, starts the bundled demo upstream
and apicache with ``./apicache.toml`` plus an ``[auth]`` table and
``tenant_claim = "zid"``, then shows with curl-like requests:

1. a token the provider signed for tenant ``acme``: ``200``, a ``MISS`` then a ``HIT``;
2. a forged token (same ``kid``, another key): ``401 invalid_token`` with
   ``WWW-Authenticate: Bearer error="invalid_token"``;
3. no token: ``401`` with ``WWW-Authenticate: Bearer``;
4. a valid token of tenant ``acme`` asking for tenant ``globex``: ``403 tenant_mismatch``;
5. ``/metrics``: the refusals by reason.

``make run`` is unchanged: its configuration has no ``[auth]``.

``python bench/demo_auth.py [--keep]`` (``--keep``: leave the daemon running
and print how to call it, until Ctrl-C).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from apicache.harness.demo import UpstreamStub
from apicache.harness.launchers import Daemon
from apicache.harness.signing import SigningKey

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
API_KEY = os.environ.get("APICACHE_API_KEY") or "dev-key-change-me"
PATH = "/server/object(42)/header"
AUTH = """

# added by bench/demo_auth.py: verified tenants
[auth]
jwks = "{jwks}"
issuers = ["{issuer}"]
audiences = ["apicache"]
"""


def configuration(base: str, jwks: Path, issuer: str) -> str:
    """
    Return ``./apicache.toml`` with ``tenant_claim`` set and ``[auth]`` added.
    """
    text = base.replace('tenant_header = "org_id"', 'tenant_header = "org_id"\ntenant_claim = "zid"', 1)
    if 'tenant_claim = "zid"' not in text:
        raise SystemExit("apicache.toml has no [server] tenant_header line to add tenant_claim after")
    return text + AUTH.format(jwks=jwks, issuer=issuer)


def show(port: int, method: str, path: str, headers: dict[str, str], shown: dict[str, str] | None = None) -> int:
    """
    Send one request, print it as a curl command and its answer's status,
    interesting headers and body; return the status.
    """
    args = " ".join(f"-H '{k}: {v}'" for k, v in (shown or headers).items())
    print(f"\n$ curl -sS -i -X {method} {args} 'http://127.0.0.1:{port}{path}'")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    print(f"HTTP/1.1 {r.status} {r.reason}")
    for name in ("x-cache", "www-authenticate", "content-type"):
        value = r.getheader(name)
        if value is not None:
            print(f"{name}: {value}")
    print(body.decode("utf-8", "replace")[:300])
    return r.status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="verified tenants: a token accepted, a forged one refused")
    p.add_argument("--keep", action="store_true", help="leave the daemon running until Ctrl-C")
    args = p.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="apicache-demo-auth-"))
    provider = SigningKey(kid="demo-key", issuer="https://idp.example/realms/demo")
    forger = SigningKey(kid="demo-key", issuer=provider.issuer)  # same kid, its own key
    jwks = folder / "jwks.json"
    provider.write_jwks(jwks)
    with open(os.path.join(ROOT, "apicache.toml"), encoding="utf-8") as f:
        config = folder / "apicache-auth.toml"
        config.write_text(configuration(f.read(), jwks, provider.issuer))

    upstream = UpstreamStub(latency=0.05).start()
    env = {"APICACHE_API_KEY": API_KEY, "APICACHE_UPSTREAM_URL": upstream.url}
    daemon = Daemon(str(config), env=env, api_key=None)
    print(f"== key set {jwks} (one RS256 key, kid demo-key); apicache with {config.name} "
          f"(./apicache.toml + [auth], tenant_claim = \"zid\") on port {daemon.port}", flush=True)
    try:
        daemon.start()
        token = provider.token(tenant="acme")
        base = {"api-key": API_KEY, "org_id": "acme"}
        short = {**base, "authorization": "Bearer $TOKEN"}
        print(f"\n== 1. a token the provider signed for tenant acme (TOKEN={token[:24]}…)")
        statuses = [
            show(daemon.port, "GET", PATH, {**base, "authorization": f"Bearer {token}"}, short),
            show(daemon.port, "GET", PATH, {**base, "authorization": f"Bearer {token}"}, short),
        ]
        print("\n== 2. a forged token: the same kid, signed with another key")
        statuses.append(show(daemon.port, "GET", PATH, {**base, "authorization": f"Bearer {forger.token(tenant='acme')}"},
                             {**base, "authorization": "Bearer $FORGED"}))
        print("\n== 3. no token")
        statuses.append(show(daemon.port, "GET", PATH, base))
        print("\n== 4. acme's token asking for globex (a purge, too)")
        other = {"api-key": API_KEY, "org_id": "globex", "authorization": f"Bearer {token}"}
        statuses.append(show(daemon.port, "GET", PATH, other, {**other, "authorization": "Bearer $TOKEN"}))
        statuses.append(show(daemon.port, "DELETE", "/clear", other, {**other, "authorization": "Bearer $TOKEN"}))
        print("\n== 5. /metrics: refusals by reason")
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        conn.request("GET", "/metrics", headers={"api-key": API_KEY})
        text = conn.getresponse().read().decode()
        conn.close()
        for line in text.splitlines():
            if line.startswith(("apicache_auth_failures_total", "apicache_jwks_keys")) and not line.endswith(" 0.0"):
                print(line)
        expected = [200, 200, 401, 401, 403, 403]
        if statuses != expected:
            print(f"\nUNEXPECTED: statuses {statuses}, expected {expected}", file=sys.stderr)
            return 1
        if args.keep:
            print(f"\napicache serves on port {daemon.port}; a fresh token:\nTOKEN={provider.token(tenant='acme', lifetime=3600)}")
            print("Ctrl-C stops it.", flush=True)
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("\n== stopping", flush=True)
        daemon.stop()
        upstream.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
