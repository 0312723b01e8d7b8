"""
What the tests of verified tenants share (C{[auth]}): signing keys, an
in-memory JWKS endpoint, and L{AuthWire}, the API with a real
L{TokenVerifier} and L{JWKSSource} behind a real L{ApiSite} over a
StringTransport.

Not a test module: test modules import from here, never from each other.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from apicache.auth.jwks import JWKSSource
from apicache.auth.tokens import TokenVerifier
from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import Router
from apicache.config import parse_config
from apicache.http.api import CacheAPI
from apicache.http.channel import ApiSite
from apicache.http.front import ApiFront
from apicache.store.memory import MemoryStore
from apicache.testing import OBJECT_PATH as PATH
from apicache.testing import OBJECT_ROUTE, CountingResource, FakeUpstream, answer_object, parse_response, write_jwks
from apicache.testing import TOKEN_AUDIENCE as AUDIENCE
from apicache.testing import TOKEN_ISSUER as ISSUER
from apicache.testing import TOKEN_NOW as NOW
from apicache.testing import TokenSigner as Signer

ROUTES = [OBJECT_ROUTE]

RSA = Signer("RS256", "rsa-w")
OTHER = Signer("RS256", "rsa-w")  # the same kid, another key: a forgery
LATER = Signer("ES256", "ec-later")  # published after start-up
K1 = (b"api-key", b"k1")
T1 = (b"org_id", b"tenant-a")
WRITE_ROUTES = [{**ROUTES[0], "pass_methods": ["POST", "PUT"]}]


def bearer(token: bytes) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + token)


class KeySetResource(Resource):
    """
    A JWKS endpoint for the in-memory agent; with C{hold} set, requests
    wait for L{release}.
    """

    isLeaf = True

    def __init__(self, *members: dict[str, Any]) -> None:
        super().__init__()
        self.body = json.dumps({"keys": list(members)}).encode()
        self.requests = 0
        self.hold = False
        self.held: list[Any] = []

    def render_GET(self, request: Any) -> bytes | int:
        self.requests += 1
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self.body

    def release(self) -> None:
        held, self.held = self.held, []
        for request in held:
            request.write(self.body)
            request.finish()


class AuthWire:
    """
    A site answering raw HTTP bytes in-process, with C{[auth]} set.

    @param jwks: C{"file"} (the key set file holds RSA's key) or C{"http"}
        (an in-memory HTTP agent serves it; L{flush} delivers its answers).
    """

    def __init__(self, server: dict[str, Any] | None = None, routes: list[dict[str, Any]] = ROUTES, jwks: str = "file") -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        folder = tempfile.mkdtemp(prefix="apicache-auth-wire-")
        self.folder = folder
        self.path = Path(folder) / "jwks.json"
        write_jwks(self.path, RSA.jwk())
        location = str(self.path)
        self.agent: RequestTraversalAgent | None = None
        if jwks == "http":
            self.keyset = KeySetResource(RSA.jwk())
            self.agent = RequestTraversalAgent(self.keyset)
            location = "http://127.0.0.1/certs"
        data = {
            "server": {"api_keys": ["k1"], **(server or {})},
            "auth": {"jwks": location, "issuers": [ISSUER], "audiences": [AUDIENCE]},
            "upstream": {"base_url": "http://up/api"},
            "routes": routes,
        }
        config = parse_config(data, "test.toml", {})
        self.source = JWKSSource(location, self.clock, agent=self.agent)
        self.source.startService()
        self.flush()
        self.verifier = TokenVerifier(
            self.source, self.clock, issuers=config.auth.issuers, audiences=config.auth.audiences
        )
        self.upstream = FakeUpstream(auto=answer_object)
        self.store = MemoryStore(1 << 20)
        self.registry = CacheRegistry(self.store, self.upstream, self.clock, config.routes, config.upstream.keyed_headers)
        self.api = CacheAPI(config, self.registry, Router(config.routes), self.clock, node="n1", verifier=self.verifier)
        self.klein = CountingResource(self.api.app.resource())
        front = ApiFront(self.klein, self.api.resolver, self.api.keys, self.registry, self.verifier)
        self.site = ApiSite(front, self.clock, None, access_log=False, keys=self.api.keys, verifier=self.verifier)

    def close(self) -> None:
        self.source.stopService()
        shutil.rmtree(self.folder)

    def flush(self) -> None:
        """Deliver what the key set's endpoint answered (L{KeySetResource.release} first)."""
        if self.agent is not None:
            self.keyset.release()
            self.agent.flush()

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def send(self, data: bytes) -> tuple[Any, StringTransport]:
        protocol, transport = self.connect()
        protocol.dataReceived(data)
        return protocol, transport

    def head(self, headers: Any, path: bytes = PATH, method: bytes = b"GET", extra: bytes = b"") -> bytes:
        lines = b"%s %s HTTP/1.1\r\nHost: x\r\n" % (method, path)
        return lines + b"".join(b"%s: %s\r\n" % h for h in headers) + extra + b"\r\n"

    def get(self, headers: Any = (K1, T1), path: bytes = PATH, method: bytes = b"GET") -> tuple[int, dict[bytes, bytes], bytes]:
        _, transport = self.send(self.head(headers, path, method))
        return parse_response(transport.value())



def unverified_jwt(claims: dict[str, Any]) -> str:
    """
    Return an C{Authorization} value holding a JWT-shaped token of
    C{claims} that no key signed (what C{tenant_claim} reads without
    C{[auth]}).
    """
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"Bearer h.{part}.s"
