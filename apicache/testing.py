"""
In-memory fakes that tests share (txacme's ``testing.py``): an upstream
whose fetches the test answers by hand, an OAuth token issuer to put behind
an in-memory agent, and a Cloud Foundry ``VCAP_SERVICES`` value.  Nothing
here opens a socket, starts a process or a thread.

Real processes and servers are elsewhere: L{apicache.harness.launchers} (the daemon,
``redis-server``, the Kafka broker), L{apicache.harness.demo} (the loopback upstream)
and L{apicache.harness.token_endpoint} (the loopback token endpoint).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from apicache.upstream.client import IUpstream, Overloaded, UpstreamResponse

__all__ = [
    "FakeUpstream",
    "PendingFetch",
    "TokenIssuer",
    "TokenResource",
    "vcap_services",
]


@dataclass
class PendingFetch:
    """
    One fetch a L{FakeUpstream} was asked for, waiting to be answered.
    """

    path: str
    headers: Sequence[tuple[bytes, bytes]]
    deferred: Deferred[UpstreamResponse]
    tenant: str = ""
    method: bytes = b"GET"
    body: bytes | None = None

    def respond(
        self,
        status: int = 200,
        body: bytes = b"{}",
        headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
    ) -> None:
        """
        Fire the fetch with an answer, header names in lower case as the
        real client gives them.
        """
        self.deferred.callback(UpstreamResponse(status, _lower(headers), body))

    def fail(self, error: Exception) -> None:
        """
        Fail the fetch with ``error`` (an L{apicache.upstream.client.UpstreamError}).
        """
        self.deferred.errback(error)


#: What answers a L{FakeUpstream}'s fetches at once: ``auto(path, headers)``
#: returns the answer, or None to leave the fetch to the test, or raises to
#: fail it.
AutoAnswer = Callable[[str, Sequence[tuple[bytes, bytes]]], "UpstreamResponse | None"]


@implementer(IUpstream)
class FakeUpstream:
    """
    The one in-memory L{IUpstream}, held to the upstream contract tests.

    Each fetch returns a Deferred that the test fires by hand
    (``pending[i].respond(...)`` or ``.fail(...)``); with ``auto`` set, the
    fetches ``auto`` answers (see L{AutoAnswer}) fire at once.

    @ivar pending: fetches not answered yet, oldest first.
    @ivar fetched: every fetch accepted, answered or not.
    """

    def __init__(self, max_in_flight: int = 1000, auto: AutoAnswer | None = None) -> None:
        self.pending: list[PendingFetch] = []
        self.fetched: list[PendingFetch] = []
        self.max_in_flight = max_in_flight
        self.auto = auto
        self.in_flight = 0
        self.closed = False

    def fetch(
        self,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        *,
        tenant: str,
        method: bytes = b"GET",
        body: bytes | None = None,
    ) -> Deferred[UpstreamResponse]:
        """
        Record the fetch (its method and body too); return a Deferred the
        test fires (or ``auto`` fired already).  It errbacks with
        L{Overloaded} at once while ``max_in_flight`` fetches are
        unanswered; it never raises.
        """
        if self.in_flight >= self.max_in_flight:
            return fail(Overloaded(f"{self.in_flight} upstream fetches in flight"))
        d: Deferred[UpstreamResponse] = Deferred()
        p = PendingFetch(path, headers, d, tenant, method, body)
        self.fetched.append(p)
        self.pending.append(p)
        self.in_flight += 1

        def done(result: Any) -> Any:
            self.in_flight -= 1
            self.pending.remove(p)
            return result

        d.addBoth(done)
        if self.auto is not None:
            try:
                answer = self.auto(path, headers)
            except Exception as e:
                d.errback(e)
            else:
                if answer is not None:
                    if any(name != name.lower() for name, _ in answer.headers):
                        answer = UpstreamResponse(answer.status, _lower(answer.headers), answer.body)
                    d.callback(answer)
        return d

    def close(self) -> Deferred[None]:
        """
        Note that it was closed; return a fired Deferred.
        """
        self.closed = True
        return succeed(None)


def _lower(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower(), value) for name, value in headers]


class TokenIssuer:
    """
    An OAuth 2 token endpoint's logic (client credentials), without the
    HTTP: each request gets the next of ``failures`` statuses while any
    are left, else a new token ``token-N-...`` valid ``expires_in``
    seconds.  L{TokenResource} serves it in memory,
    L{apicache.harness.token_endpoint.TokenEndpoint} on loopback.

    @ivar requests: each request's ``(authorization header, body)``.
    @ivar tokens: every token issued, oldest first.
    """

    def __init__(self, expires_in: float = 3600.0) -> None:
        self.expires_in = expires_in
        self.failures: list[int] = []
        self.requests: list[tuple[str, str]] = []
        self.tokens: list[str] = []
        # the loopback endpoint answers on several threads
        self._lock = threading.Lock()

    def issue(self, authorization: str, body: str) -> tuple[int, bytes]:
        """
        Record one token request; return the answer's status and JSON body.
        """
        with self._lock:
            self.requests.append((authorization, body))
            status = self.failures.pop(0) if self.failures else 200
            if status != 200:
                return status, b'{"error": "server_error"}'
            token = f"token-{len(self.tokens) + 1}-{os.urandom(6).hex()}"
            self.tokens.append(token)
            answer = {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}
            return 200, json.dumps(answer).encode()


class TokenResource(Resource):
    """
    A L{TokenIssuer} as a twisted.web resource, for an in-memory agent
    (``treq.testing.RequestTraversalAgent``).
    """

    isLeaf = True

    def __init__(self, issuer: TokenIssuer) -> None:
        super().__init__()
        self.issuer = issuer

    def render_POST(self, request: Request) -> bytes:
        """
        Return the issuer's answer to the request.
        """
        authorization = request.getHeader(b"authorization") or b""
        body = request.content.read() if request.content is not None else b""
        status, answer = self.issuer.issue(authorization.decode("latin-1"), body.decode("latin-1"))
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return answer


def vcap_services(
    api_key: str = "vcap-api-key",
    brokers: str = "broker-0.kafka.example:9093,broker-1.kafka.example:9093",
    token_url: str = "https://token.example/oauth/token",
    ca_cert: str = "https://certs.example/kafka-ca.pem",
    redis: dict[str, Any] | None = None,
) -> str:
    """
    Return a ``VCAP_SERVICES`` value as Cloud Foundry writes it, binding a
    ``cache-key`` user-provided service, a ``kafka`` service and, when
    given, a ``redis`` service (the README shows the same shape).
    """
    services: dict[str, Any] = {
        "user-provided": [
            {
                "name": "cache-key",
                "label": "user-provided",
                "tags": [],
                "credentials": {"key": api_key},
            }
        ],
        "kafka": [
            {
                "name": "events-kafka",
                "label": "kafka",
                "plan": "standard",
                "tags": ["kafka"],
                "credentials": {
                    "username": "apicache-client",
                    "password": "kafka-client-secret",
                    "cluster": {"brokers": brokers},
                    "urls": {"ca_cert": ca_cert, "token": token_url},
                },
            }
        ],
    }
    if redis is not None:
        services["redis"] = [{"name": "cache-redis", "label": "redis", "plan": "small", "credentials": redis}]
    return json.dumps(services)
