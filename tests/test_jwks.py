"""
The JSON Web Key Set source (issue 21): where it may be read from, which
keys it keeps, reads at start-up / on a timer / on an unknown kid, backoff
and logging once per state change (task.Clock, a real file); then the same
over HTTP against a real twisted.web JWKS server on loopback (real reactor):
key rotation, an unreachable URL that keeps the known keys, error answers,
oversized and silent servers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.internet import backoffPolicy
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from apicache.auth.jwks import JWKSError, JWKSSource, check_jwks_location, parse_jwks
from apicache.auth.tokens import TokenRefused, TokenVerifier
from apicache.testing import TokenSigner, write_jwks

# one key of each kind for the whole module: RSA generation is slow
RSA = TokenSigner("RS256", "rsa-1")
EC = TokenSigner("ES256", "ec-1")
ED = TokenSigner("EdDSA", "ed-1")


# -- where a key set may come from ---------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "https://idp.example/realms/acme/protocol/openid-connect/certs",
        "HTTPS://idp.example:8443/keys",
        "http://127.0.0.1:8080/jwks.json",
        "http://127.8.9.10/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]:9000/jwks.json",
        "/etc/apicache/jwks.json",
        "jwks.json",
    ],
)
def test_accepted_locations(location: str) -> None:
    assert check_jwks_location(location) == location


@pytest.mark.parametrize(
    "location, words",
    [
        ("http://idp.example/keys", "only allowed on loopback"),
        ("http://10.0.0.1/keys", "only allowed on loopback"),
        ("http://127.0.0.1.nip.io/keys", "only allowed on loopback"),
        ("ftp://127.0.0.1/keys", "file path or an https:// URL"),
        ("https:///keys", "no host"),
        ("", "empty"),
    ],
)
def test_refused_locations(location: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_jwks_location(location)


def test_a_url_needs_an_agent() -> None:
    with pytest.raises(ValueError, match="agent"):
        JWKSSource("https://idp.example/keys", Clock())


# -- which keys are kept ---------------------------------------------------------


def document(*members: Any) -> bytes:
    return json.dumps({"keys": list(members)}).encode()


def test_only_public_signature_keys_are_kept() -> None:
    keys, skipped = parse_jwks(
        document(
            RSA.jwk(),
            EC.jwk(),
            ED.jwk(),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {**TokenSigner("ES256", "enc").jwk(), "use": "enc"},
            {**RSA.key.as_dict(private=True), "kid": "leaked"},
            {"kty": "OKP", "crv": "X25519", "kid": "ecdh", "x": "F3oPXseC2XNlLbRSGhg5bHb-bHzsVPLYsQLJIwuzd2Q"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            {"kty": "EC", "kid": 7},
            RSA.jwk(),  # a repeated kid
            "not an object",
        )
    )
    assert sorted(k or "" for k in keys) == ["ec-1", "ed-1", "rsa-1"]
    assert skipped == 8
    assert not any(key.is_private for key in keys.values())


@pytest.mark.parametrize(
    "data, words",
    [
        (b"<html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", 'no "keys" array'),
        (b'{"keys": {}}', 'no "keys" array'),
        (b'{"keys": []}', "no usable signature key among 0"),
        (document({"kty": "oct", "k": "c2VjcmV0"}), "no usable signature key among 1"),
    ],
)
def test_unusable_key_sets(data: bytes, words: str) -> None:
    with pytest.raises(JWKSError, match=words):
        parse_jwks(data)


# -- reads from a file, on a clock -----------------------------------------------


class FileSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        folder = tempfile.mkdtemp(prefix="apicache-jwks-")
        self.addCleanup(shutil.rmtree, folder)
        self.path = Path(folder) / "jwks.json"
        self.events: list[dict[str, Any]] = []

    def source(self, **options: Any) -> JWKSSource:
        settings: dict[str, Any] = {
            "refresh_interval": 300.0,
            # no jitter: the delays are exact
            "retry_policy": backoffPolicy(initialDelay=1.0, maxDelay=60.0, factor=2.0, jitter=lambda: 0.0),
        }
        settings.update(options)
        source = JWKSSource(str(self.path), self.clock, **settings)
        source.log = Logger(observer=self.events.append)
        source.startService()
        self.addCleanup(source.stopService)
        return source

    def logged(self, level: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["log_level"].name == level]

    def test_the_key_set_is_read_at_start_up(self) -> None:
        write_jwks(self.path, RSA.jwk(), EC.jwk())
        source = self.source()
        assert source.is_ready()
        assert source.key_count == 2
        assert source.reads == 1
        assert source.refresh_failures == 0
        assert len(self.logged("info")) == 1

    def test_it_is_read_again_every_refresh_interval(self) -> None:
        write_jwks(self.path, RSA.jwk())
        source = self.source()
        generation = source.keys.generation
        self.clock.advance(299)
        assert source.reads == 1
        self.clock.advance(1)
        assert source.reads == 2
        # unchanged: the same generation, nothing logged
        assert source.keys.generation == generation
        assert len(self.logged("info")) == 1
        write_jwks(self.path, RSA.jwk(), ED.jwk())
        self.clock.advance(300)
        assert source.reads == 3
        assert sorted(k or "" for k in source.keys) == ["ed-1", "rsa-1"]
        assert source.keys.generation == generation + 1
        assert len(self.logged("info")) == 2

    def test_a_missing_file_is_retried_with_backoff_and_logged_once(self) -> None:
        source = self.source()
        assert not source.is_ready()
        assert source.refresh_failures == 1
        read_at = []
        for _ in range(40):
            self.clock.advance(1)
            if source.reads > len(read_at) + 1:
                read_at.append(self.clock.seconds())
        # backing off, but never more than 4 s apart before a key set has
        # loaded: /readyz follows a change within 5 s
        assert read_at == [1.0, 3.0, 7.0, 11.0, 15.0, 19.0, 23.0, 27.0, 31.0, 35.0, 39.0]
        assert source.refresh_failures == 12
        assert len(self.logged("warn")) == 1
        write_jwks(self.path, RSA.jwk())
        self.clock.advance(4)
        assert source.is_ready()
        assert source.key_count == 1
        assert len(self.logged("warn")) == 1
        assert len(self.logged("info")) == 1
        # back to the normal interval
        reads = source.reads
        self.clock.advance(299)
        assert source.reads == reads
        self.clock.advance(1)
        assert source.reads == reads + 1

    def test_backoff_never_waits_longer_than_the_refresh_interval(self) -> None:
        source = self.source(refresh_interval=5.0, retry_policy=lambda attempt: 3600.0)
        self.clock.advance(4)
        assert source.reads == 2
        write_jwks(self.path, RSA.jwk())
        self.clock.advance(4)
        assert source.is_ready()
        self.path.unlink()
        # once a key set has loaded, only the refresh interval bounds the backoff
        self.clock.advance(5)
        assert source.reads == 4 and source.refresh_failures == 3
        self.clock.advance(4.9)
        assert source.reads == 4
        self.clock.advance(0.1)
        assert source.reads == 5

    def test_a_broken_file_keeps_the_known_keys(self) -> None:
        write_jwks(self.path, RSA.jwk(), EC.jwk())
        source = self.source()
        keys = source.keys
        self.path.write_text('{"keys": [')
        self.assertEqual(self.successResultOf(source.refresh()), False)
        self.path.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
        self.assertEqual(self.successResultOf(source.refresh()), False)
        assert source.keys is keys
        assert source.is_ready()
        assert source.refresh_failures == 2
        warnings = self.logged("warn")
        assert len(warnings) == 1
        assert "keeping the {count} keys known" in warnings[0]["log_format"]
        assert warnings[0]["count"] == 2
        write_jwks(self.path, RSA.jwk(), EC.jwk())
        self.assertEqual(self.successResultOf(source.refresh()), True)
        assert "readable again" in self.logged("info")[-1]["log_format"]

    def test_a_key_set_over_the_size_limit_is_refused(self) -> None:
        write_jwks(self.path, RSA.jwk(), EC.jwk(), ED.jwk())
        source = self.source(max_bytes=200)
        assert not source.is_ready()
        assert "over 200 bytes" in self.logged("warn")[0]["error"]

    def test_unknown_kid_reads_at_most_once_per_10_s(self) -> None:
        write_jwks(self.path, RSA.jwk())
        source = self.source()
        d = source.refresh_for_unknown_kid()
        assert d is not None and self.successResultOf(d) is True
        assert source.reads == 2
        self.clock.advance(9.9)
        assert source.refresh_for_unknown_kid() is None
        self.clock.advance(0.1)
        assert source.refresh_for_unknown_kid() is not None
        assert source.reads == 3

    def test_stopping_cancels_the_timer(self) -> None:
        write_jwks(self.path, RSA.jwk())
        source = self.source()
        assert self.clock.getDelayedCalls()
        source.stopService()
        assert not self.clock.getDelayedCalls()

    def test_the_location_is_logged_without_secrets(self) -> None:
        source = JWKSSource("https://user:pw@idp.example/keys?token=s3cret", self.clock, agent=object())  # type: ignore[arg-type]
        assert "s3cret" not in repr(source) and "pw" not in repr(source)


# -- reads over HTTP, from a real loopback server ---------------------------------


class JWKSResource(Resource):
    """
    A JWKS endpoint whose answer the test changes: ``mode`` is ``"ok"``,
    ``"error"`` (503), ``"huge"`` (a 1 MiB body) or ``"silent"`` (never
    answers).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = b"{}"
        self.mode = "ok"
        self.requests = 0
        self.held: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        self.requests += 1
        request.setHeader(b"content-type", b"application/jwk-set+json")
        if self.mode == "error":
            request.setResponseCode(503)
            return b"busy"
        if self.mode == "huge":
            return b'{"keys": [' + b" " * (1 << 20) + b"]}"
        if self.mode == "silent":
            self.held.append(request)
            return NOT_DONE_YET
        return self.body


@pytest.fixture
def jwks_server() -> Iterator[tuple[JWKSResource, Any]]:
    resource = JWKSResource()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
    yield resource, port
    for request in resource.held:
        if request.channel is not None:
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
    if port.connected:
        port.stopListening()


def url_of(port: Any) -> str:
    return f"http://127.0.0.1:{port.getHost().port}/realms/acme/certs"


def http_source(port: Any, **options: Any) -> JWKSSource:
    settings: dict[str, Any] = {"refresh_interval": 300.0, "timeout": 2.0}
    settings.update(options)
    return JWKSSource(url_of(port), reactor, Agent(reactor), **settings)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_key_rotation_through_a_loopback_jwks_server(jwks_server) -> None:
    resource, port = jwks_server
    resource.body = document(RSA.jwk())
    source = http_source(port)
    source.startService()
    try:
        assert await source.refresh() is True
        assert source.is_ready() and source.key_count == 1
        verifier = TokenVerifier(source, reactor, leeway=30)  # type: ignore[arg-type]
        old = RSA.token(exp=int(reactor.seconds()) + 600)  # type: ignore[attr-defined]
        assert verifier.verify(old)["sub"] == "alice"

        # the provider rotates: a new key, the old one withdrawn
        new = TokenSigner("ES256", "ec-rotated")
        resource.body = document(new.jwk())
        requests = resource.requests
        exp = int(reactor.seconds()) + 600  # type: ignore[attr-defined]
        result = verifier.verify_or_refresh(new.token(exp=exp, iat=None))
        # a second request with an unknown kid waits for the same read
        second = verifier.verify_or_refresh(new.token(exp=exp, iat=None, jti="2"))
        assert isinstance(result, Deferred) and isinstance(second, Deferred)
        assert (await result)["sub"] == "alice"
        assert (await second)["jti"] == "2"
        assert resource.requests == requests + 1
        assert sorted(k or "" for k in source.keys) == ["ec-rotated"]
        # the old token was cached, but its key is gone
        with pytest.raises(TokenRefused) as caught:
            verifier.verify(old)
        assert caught.value.reason == "unknown_kid"
    finally:
        source.stopService()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_url_keeps_the_known_keys(jwks_server) -> None:
    resource, port = jwks_server
    resource.body = document(RSA.jwk(), EC.jwk())
    source = http_source(port)
    source.startService()
    try:
        assert await source.refresh() is True
        await port.stopListening()
        assert await source.refresh() is False
        assert source.refresh_failures == 1
        assert source.last_error is not None and source.last_error.startswith("ConnectionRefusedError"), (
            source.last_error
        )
        assert source.is_ready() and source.key_count == 2
        verifier = TokenVerifier(source, reactor)  # type: ignore[arg-type]
        now = int(reactor.seconds())  # type: ignore[attr-defined]
        assert verifier.verify(EC.token(exp=now + 600, iat=now))["sub"] == "alice"
        # an unknown kid asks for a read, which fails too: still refused, keys kept
        stranger = TokenSigner("ES256", "stranger")
        failure = verifier.verify_or_refresh(stranger.token(exp=now + 600, iat=now))
        assert isinstance(failure, Deferred)
        with pytest.raises(TokenRefused):
            await failure
        assert source.key_count == 2
        assert source.refresh_failures == 2
    finally:
        source.stopService()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_url_at_start_up_is_not_ready(jwks_server) -> None:
    resource, port = jwks_server
    source = http_source(port)
    await port.stopListening()
    source.startService()
    try:
        assert await source.refresh() is False
        assert not source.is_ready()
        assert source.key_count == 0
    finally:
        source.stopService()


@pytest_twisted.ensureDeferred
async def test_error_answers_oversized_and_silent_servers_fail_the_read(jwks_server) -> None:
    resource, port = jwks_server
    resource.body = document(RSA.jwk())
    source = http_source(port, timeout=0.5, max_bytes=64 * 1024)
    events: list[dict[str, Any]] = []
    source.log = Logger(observer=events.append)
    source.startService()
    try:
        assert await source.refresh() is True
        for mode, words in (
            ("error", "HTTP 503"),
            ("huge", "key set over 65536 bytes"),
            ("silent", "no answer within 0.5 s"),
        ):
            resource.mode = mode
            assert await source.refresh() is False, mode
            assert source.last_error == words
            assert source.key_count == 1
        assert source.refresh_failures == 3
        warnings = [e for e in events if e["log_level"].name == "warn"]
        # logged once when it started failing, with the first error
        assert len(warnings) == 1 and warnings[0]["error"] == "HTTP 503"
        resource.mode = "ok"
        assert await source.refresh() is True
        assert "readable again" in events[-1]["log_format"]
        assert source.last_error is None
    finally:
        source.stopService()


@pytest_twisted.ensureDeferred
async def test_stopping_cancels_a_read_in_flight(jwks_server) -> None:
    resource, port = jwks_server
    resource.mode = "silent"
    source = http_source(port, timeout=30.0)
    source.startService()
    waiter = source.refresh()
    await deferLater(reactor, 0.2, lambda: None)
    source.stopService()
    assert await waiter is False
    assert source.refresh_failures == 0
