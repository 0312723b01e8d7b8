"""
The upstream client on the real reactor: certificates are verified, and a
refused connection is "unreachable".
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
import twisted.test
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site

from apicache.harness.launchers import free_port
from apicache.upstream.client import UpstreamClient, UpstreamUnreachable

#: a self-signed certificate that Twisted's own tests use
PEM = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


def client(base_url: str) -> UpstreamClient:
    return UpstreamClient(reactor, base_url, timeout=5.0, max_body_bytes=1000, max_connections=2, max_in_flight=2)


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_is_refused():
    port = await serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={PEM}").listen(Site(Hello()))
    c = client(f"https://localhost:{port.getHost().port}")
    try:
        with pytest.raises(UpstreamUnreachable) as e:
            await c.fetch("/x", [], tenant="acme")
        assert "certificate" in str(e.value)
    finally:
        await c.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_plain_http_is_fetched_and_refused_connections_are_unreachable():
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(Hello()))
    c = client(f"http://127.0.0.1:{port.getHost().port}")
    try:
        r = await c.fetch("/x", [], tenant="acme")
        assert (r.status, r.body) == (200, b"hello")
    finally:
        await c.close()
        await port.stopListening()
    dead = client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamUnreachable):
        await dead.fetch("/x", [], tenant="acme")
