"""
In-memory fakes that tests share (txacme's ``testing.py``): an upstream
whose fetches the test answers by hand, the HTTP API built as the daemon
builds it but over that upstream, a memory store and a C{task.Clock}
(L{InMemoryAPI}), invalidators that record or fail, two worker control
links joined in memory, confluent-kafka's consumer and messages for the
event listener's loop, a JWT signer and its JWKS, an OAuth token issuer to
put behind an in-memory agent, and a Cloud Foundry ``VCAP_SERVICES``
value.  Nothing here opens a socket, starts a process or a thread.

Real processes and servers are elsewhere: L{apicache.harness.launchers} (the daemon,
``redis-server``, the Kafka broker), L{apicache.harness.demo} (the loopback upstream)
and L{apicache.harness.token_endpoint} (the loopback token endpoint).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProtocol, IReactorFromThreads, IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from zope.interface import implementer

from apicache.cache.invalidator import IInvalidator
from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import Router
from apicache.config import Config, parse_config
from apicache.daemon.workers import ControlLink, Invalidation
from apicache.http.api import CacheAPI
from apicache.http.channel import ApiSite, ConnectionLimits
from apicache.http.front import ApiFront
from apicache.ops.logs import AccessLog
from apicache.store.interface import IStore, StoreUnavailable
from apicache.store.memory import MemoryStore
from apicache.upstream.client import IUpstream, Overloaded, UpstreamResponse

__all__ = [
    "FakeUpstream",
    "PendingFetch",
    "AutoAnswer",
    "OBJECT_ROUTE",
    "OBJECT_PATH",
    "OBJECT_BODY",
    "answer_object",
    "CountingResource",
    "InMemoryAPI",
    "parse_response",
    "dechunk",
    "RecordingInvalidator",
    "FlakyInvalidator",
    "linked_control_links",
    "ImmediateClock",
    "FakeMessage",
    "FakeConsumer",
    "EndOffsetConsumer",
    "TOKEN_ISSUER",
    "TOKEN_AUDIENCE",
    "TOKEN_NOW",
    "TokenSigner",
    "write_jwks",
    "b64url",
    "jwt_segment",
    "unsigned_token",
    "hmac_token",
    "token_claims",
    "TokenIssuer",
    "TokenResource",
    "vcap_services",
    "python_lines",
]

_T = TypeVar("_T")


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


#: The route L{InMemoryAPI} serves unless told otherwise.
OBJECT_ROUTE: Mapping[str, Any] = {
    "type": "object",
    "path": "/server/object(<id>)/header",
    "upstream": "/object({id})/header",
    "ttl": 10,
}

#: The path L{InMemoryAPI.get} asks for unless told otherwise.
OBJECT_PATH = b"/server/object(42)/header"

#: The body L{answer_object} answers with.
OBJECT_BODY = b'{"id": 42}'


def answer_object(path: str, headers: Sequence[tuple[bytes, bytes]]) -> UpstreamResponse:
    """
    The L{AutoAnswer} L{InMemoryAPI} uses unless told otherwise: a JSON
    L{OBJECT_BODY} with the entity tag C{"e"}, whatever was asked.
    """
    return UpstreamResponse(200, [(b"content-type", b"application/json"), (b"etag", b'"e"')], OBJECT_BODY)


class CountingResource(Resource):
    """
    A resource in front of another (the Klein application's), counting the
    requests that reach it: what the front answered itself never does.

    @ivar calls: how many requests reached C{inner}.
    """

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def render(self, request: IRequest) -> Any:
        """
        Count the request; return what C{inner} renders.
        """
        self.calls += 1
        return self.inner.render(request)


class InMemoryAPI:
    """
    The daemon's HTTP API, built as L{apicache.tap} builds it, in memory:
    the parsed configuration, a L{MemoryStore}, a L{FakeUpstream}, the
    L{CacheRegistry}, the Klein L{CacheAPI} behind L{ApiFront}, and an
    L{ApiSite}, all on one L{Clock}.  Requests go in through C{treq} (treq's
    L{StubTreq}, see L{request}) or as raw HTTP bytes through C{site} (see
    L{raw} and L{get}).

    The configuration is C{settings} when given (a document or a parsed
    L{Config}), else C{{"server": {"api_keys": api_keys, **server},
    "upstream": {"base_url": "http://up/api", **upstream_settings},
    "routes": routes}}.

    @ivar clock: the L{Clock} every part runs on.
    @ivar config: the parsed L{Config}.
    @ivar store: the store (a L{MemoryStore} unless given).
    @ivar upstream: the upstream (a L{FakeUpstream} answering with C{auto}
        unless given).
    @ivar registry: the L{CacheRegistry}.
    @ivar api: the L{CacheAPI}.
    @ivar klein: the Klein resource, counting the requests that reach it
        (a L{CountingResource}).
    @ivar front: the L{ApiFront} over C{klein}: the root resource.
    @ivar treq: a L{StubTreq} over C{front}.
    @ivar site: an L{ApiSite} over C{front}.
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | Config | None = None,
        *,
        routes: Sequence[Mapping[str, Any]] = (OBJECT_ROUTE,),
        server: Mapping[str, Any] | None = None,
        upstream_settings: Mapping[str, Any] | None = None,
        api_keys: Sequence[str] = ("k1",),
        source: str = "test.toml",
        auto: AutoAnswer | None = answer_object,
        upstream: IUpstream | None = None,
        store: IStore | None = None,
        registry: CacheRegistry | None = None,
        registry_options: Mapping[str, Any] | None = None,
        upstream_config: bool = False,
        clock: Clock | None = None,
        now: float = 100.0,
        max_bytes: int = 1 << 20,
        node: str | None = "n1",
        access_log: AccessLog | bool = False,
        count_requests: bool = False,
        check_keys: bool = False,
        limits: ConnectionLimits | None = None,
        worker: int | None = None,
    ) -> None:
        """
        @param settings: the whole configuration; the next four parameters
            build one when it is C{None}.
        @param auto: how the L{FakeUpstream} answers (L{AutoAnswer}; C{None}:
            the test answers each fetch by hand).
        @param upstream: an upstream to use instead of a L{FakeUpstream}.
        @param store: a store to use instead of a L{MemoryStore} of
            C{max_bytes}.
        @param registry: a registry to serve instead of a new one (its store
            and upstream are then C{store} and C{upstream}).
        @param registry_options: more keyword arguments of L{CacheRegistry}.
        @param upstream_config: give the registry the configuration's
            C{[upstream]} table, as the daemon does.
        @param clock: the clock (default: a new L{Clock} advanced to C{now}).
        @param node: the node name the API gives in C{Via} and C{GET /}.
        @param access_log: the site's access log (C{True}: one of its own;
            C{False}: none).
        @param count_requests: the site counts requests in the API's metrics,
            as the daemon's does.
        @param check_keys: the site checks the API's keys once a request's
            headers are in, as the daemon's does (else only L{ApiFront} does).
        @param limits: the site's connection limits (default: SPEC's).
        @param worker: the worker index the site logs.
        """
        if clock is None:
            clock = Clock()
            clock.advance(now)
        self.clock = clock
        if isinstance(settings, Config):
            self.config = settings
        else:
            if settings is None:
                settings = {
                    "server": {"api_keys": list(api_keys), **(server or {})},
                    "upstream": {"base_url": "http://up/api", **(upstream_settings or {})},
                    "routes": [dict(r) for r in routes],
                }
            self.config = parse_config(settings, source, {})
        if registry is None:
            self.store = store if store is not None else MemoryStore(max_bytes)
            self.upstream = upstream if upstream is not None else FakeUpstream(auto=auto)
            options = dict(registry_options or {})
            if upstream_config:
                options["upstream_config"] = self.config.upstream
            registry = CacheRegistry(
                self.store, self.upstream, clock, self.config.routes, self.config.upstream.keyed_headers, **options
            )
        else:
            self.store = registry.store
            self.upstream = registry.upstream
        self.registry = registry
        self.api = CacheAPI(self.config, registry, Router(self.config.routes, source), clock, node=node)
        self.klein = CountingResource(self.api.app.resource())
        self.front = ApiFront(self.klein, self.api.resolver, self.api.keys, registry)
        self.treq = StubTreq(self.front)
        self.site = ApiSite(
            self.front,
            clock,
            self.api.metrics if count_requests else None,
            access_log,
            worker=worker,
            keys=self.api.keys if check_keys else None,
            limits=limits,
        )

    def request(
        self, method: str, url: str, headers: Mapping[str, str] | None = None, data: bytes | None = None
    ) -> Deferred[Any]:
        """
        Send a request through C{treq} and let it finish; return the
        Deferred firing with treq's response (already fired unless the
        upstream was left to answer by hand).
        """
        d: Deferred[Any] = self.treq.request(  # type: ignore[attr-defined]
            method, url, headers=headers, data=data, allow_redirects=False
        )
        self.treq.flush()
        return d

    def connect(self) -> tuple[IProtocol, StringTransport]:
        """
        Return a new connection to C{site} from 127.0.0.1 and its transport.
        """
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def raw(self, data: bytes) -> tuple[bytes, StringTransport]:
        """
        Send C{data} on a new connection; return what was written back, and
        the transport (still open).
        """
        protocol, transport = self.connect()
        protocol.dataReceived(data)
        return transport.value(), transport

    def get(
        self,
        path: bytes = OBJECT_PATH,
        headers: Sequence[tuple[bytes, bytes]] = ((b"api-key", b"k1"), (b"org_id", b"t1")),
        method: bytes = b"GET",
        version: bytes = b"HTTP/1.1",
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """
        Send one request as raw bytes; return its answer parsed by
        L{parse_response}.
        """
        head = b"%s %s %s\r\nHost: x\r\n" % (method, path, version)
        head += b"".join(b"%s: %s\r\n" % h for h in headers)
        out, _ = self.raw(head + b"\r\n")
        return parse_response(out)


def parse_response(out: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """
    Return the status, the fields (lower-case name: value) and the body
    (de-chunked) of the first answer in C{out}.
    """
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        fields[name.lower()] = value
    if fields.get(b"transfer-encoding") == b"chunked":
        body = dechunk(body)
    return int(lines[0].split(b" ")[1]), fields, body


def dechunk(data: bytes) -> bytes:
    """
    Return the body of a chunked answer.
    """
    out = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, data = out + data[:n], data[n + 2 :]


# the parts of IInvalidator tests call (tag purges: subclass and add them)
@implementer(IInvalidator)
class RecordingInvalidator:  # type: ignore[misc]
    """
    An L{IInvalidator} that records its calls and says it touched C{n}
    entries each time.

    @ivar calls: each call, as an L{Invalidation}.
    """

    def __init__(self, n: int = 1) -> None:
        self.n = n
        self.calls: list[Invalidation] = []

    def invalidate(self, tenant: str | None, route_type: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Record the call; return a Deferred fired with C{n}.
        """
        self.calls.append(Invalidation("invalidate", tenant, route_type, params))
        return succeed(self.n)

    def refresh(self, tenant: str | None, route_type: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Record the call; return a Deferred fired with C{n}.
        """
        self.calls.append(Invalidation("refresh", tenant, route_type, params))
        return succeed(self.n)

    def clear(self, tenant: str | None) -> Deferred[int]:
        """
        Record the call; return a Deferred fired with C{n}.
        """
        self.calls.append(Invalidation("clear", tenant))
        return succeed(self.n)


# the parts of IInvalidator the event handler calls
@implementer(IInvalidator)
class FlakyInvalidator:  # type: ignore[misc]
    """
    An L{IInvalidator} that fails with L{StoreUnavailable} for the ids in
    C{failing}, as the registry does when Redis is away.

    @ivar applied: each call that succeeded: C{(action, tenant, route,
        params)}.
    """

    def __init__(self, *failing: str) -> None:
        self.failing = set(failing)
        self.applied: list[tuple[str, str | None, str, tuple[str, ...]]] = []

    def _do(self, action: str, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        if params[0] in self.failing:
            return fail(StoreUnavailable("away"))
        self.applied.append((action, tenant, route, params))
        return succeed(1)

    def invalidate(self, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Return a Deferred fired with 1, or failed if C{params[0]} fails.
        """
        return self._do("invalidate", tenant, route, params)

    def refresh(self, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        """
        Return a Deferred fired with 1, or failed if C{params[0]} fails.
        """
        return self._do("refresh", tenant, route, params)


def linked_control_links(
    clock: IReactorTime,
    answer_a: Callable[[Invalidation], Deferred[int]] = lambda i: succeed(0),
    answer_b: Callable[[Invalidation], Deferred[int]] = lambda i: succeed(0),
    lost_b: Callable[[], None] = lambda: None,
) -> tuple[ControlLink, ControlLink, IOPump]:
    """
    Join two ends of a worker control link in memory.

    @return: the two ends and the pump that carries their bytes
        (C{pump.flush()}).
    """
    a = ControlLink(clock, answer_a)
    b = ControlLink(clock, answer_b, lost_b)
    pump = connect(b, FakeTransport(b, isServer=True), a, FakeTransport(a, isServer=False), greet=False)
    return a, b, pump


@implementer(IReactorFromThreads)
class ImmediateClock(Clock):
    """
    A L{Clock} that runs calls "from the consumer thread" at once: the
    test's thread plays both the event listener's consumer thread and the
    reactor's.
    """

    def callFromThread(self, callable: Callable[..., Any], *args: object, **kwargs: object) -> None:
        """
        Call C{callable} now.
        """
        callable(*args, **kwargs)


class FakeMessage:
    """
    What the event listener reads of a confluent-kafka C{Message}, of
    topic C{t}, created at 990 s.
    """

    def __init__(self, partition: int, offset: int, value: bytes | None = None, error: KafkaError | None = None) -> None:
        self._partition, self._offset, self._value, self._error = partition, offset, value, error

    def error(self) -> KafkaError | None:
        """
        Return the error given, if any.
        """
        return self._error

    def value(self) -> bytes | None:
        """
        Return the value given.
        """
        return self._value

    def topic(self) -> str:
        """
        Return C{"t"}.
        """
        return "t"

    def partition(self) -> int:
        """
        Return the partition given.
        """
        return self._partition

    def offset(self) -> int:
        """
        Return the offset given.
        """
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        """
        Return C{(TIMESTAMP_CREATE_TIME, 990000)}: created at 990 s.
        """
        return (1, 990_000)


class FakeConsumer:
    """
    The parts of confluent-kafka's C{Consumer} the event listener's loop
    uses, handing out C{messages} and recording what it was asked to do.
    """

    def __init__(self, messages: Sequence[FakeMessage] = (), committed: dict[int, int] | None = None, high: int = 42) -> None:
        self.messages = list(messages)
        self.committed_offsets = committed or {}
        self.high = high
        self.stored: list[tuple[str, int, int]] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.assigned: list[tuple[str, int, int]] = []
        self.credentials: list[tuple[str, str]] = []
        self.commits = 0
        self.commit_error: KafkaError | None = None

    def poll(self, timeout: float) -> FakeMessage | None:
        """
        Return the next message, if any.
        """
        return self.messages.pop(0) if self.messages else None

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        """
        Return the next C{n} messages or fewer.
        """
        taken, self.messages = self.messages[:n], self.messages[n:]
        return taken

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        """
        Record the offsets stored.
        """
        self.stored.extend((tp.topic, tp.partition, tp.offset) for tp in offsets)

    def seek(self, tp: TopicPartition) -> None:
        """
        Record the seek.
        """
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def commit(self, asynchronous: bool = True) -> None:
        """
        Count the commit; raise C{commit_error} if set.
        """
        self.commits += 1
        if self.commit_error is not None:
            raise KafkaException(self.commit_error)

    def set_sasl_credentials(self, username: str, password: str) -> None:
        """
        Record the credentials handed over.
        """
        self.credentials.append((username, password))

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        """
        Return C{committed_offsets} for C{partitions} (-1001, none, for the
        others).
        """
        return [TopicPartition(p.topic, p.partition, self.committed_offsets.get(p.partition, -1001)) for p in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        """
        Return C{(0, high)}.
        """
        return (0, self.high)

    def assign(self, partitions: list[TopicPartition]) -> None:
        """
        Record the partitions and offsets assigned.
        """
        self.assigned = [(p.topic, p.partition, p.offset) for p in partitions]


class EndOffsetConsumer(FakeConsumer):
    """
    A L{FakeConsumer} that also answers the end-offset and metadata queries
    of the listener's watermark: C{ends} per partition number, C{partitions}
    partitions listed for every topic; it records each end-offset query and
    fails them with C{query_error} when set.
    """

    def __init__(
        self, messages: Sequence[FakeMessage] = (), ends: dict[int, int] | None = None, partitions: int = 1
    ) -> None:
        super().__init__(messages)
        self.ends = ends or {}
        self.partitions = partitions
        self.queries: list[list[tuple[str, int, int]]] = []
        self.query_error: KafkaError | None = None

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        """
        Record the query; answer each partition's end offset from C{ends}.
        """
        self.queries.append([(p.topic, p.partition, p.offset) for p in partitions])
        if self.query_error is not None:
            raise KafkaException(self.query_error)
        return [TopicPartition(p.topic, p.partition, self.ends.get(p.partition, 0)) for p in partitions]

    def list_topics(self, topic: str, timeout: float) -> Any:
        """
        Return metadata listing C{partitions} partitions of ``topic``.
        """
        count = self.partitions

        class Topic:
            error = None
            partitions = dict.fromkeys(range(count))

        class Metadata:
            topics = {topic: Topic()}

        return Metadata()


#: The issuer, audience and time L{TokenSigner.token} signs with unless told
#: otherwise.
TOKEN_ISSUER = "https://idp.example/realms/acme"
TOKEN_AUDIENCE = "apicache"
TOKEN_NOW = 1_750_000_000.0


def b64url(data: bytes) -> str:
    """
    Return C{data} in unpadded base64url, as JWTs write it.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_segment(obj: dict[str, Any]) -> str:
    """
    Return C{obj} as a JWT header or claims segment.
    """
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


class TokenSigner:
    """
    A private key generated with cryptography (RSA 2048 for C{RS*} and
    C{PS*}, P-256 for C{ES256}, else Ed25519), its kid and algorithm, and
    the public JWK to publish.
    """

    def __init__(self, alg: str, kid: str) -> None:
        self.alg = alg
        self.kid = kid
        if alg.startswith(("RS", "PS")):
            self.native: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.key: Key = RSAKey.import_key(self.native, parameters={"kid": kid})
        elif alg == "ES256":
            self.native = ec.generate_private_key(ec.SECP256R1())
            self.key = ECKey.import_key(self.native, parameters={"kid": kid})
        else:
            self.native = ed25519.Ed25519PrivateKey.generate()
            self.key = OKPKey.import_key(self.native, parameters={"kid": kid})

    def jwk(self, **extra: Any) -> dict[str, Any]:
        """
        Return the public JWK, with C{extra} members.
        """
        return {**self.key.as_dict(private=False), "kid": self.kid, **extra}

    def public_pem(self) -> bytes:
        """
        Return the public key in PEM.
        """
        return self.native.public_key().public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, header: dict[str, Any] | None = None, **claims: Any) -> bytes:
        """
        Return a signed token: issuer L{TOKEN_ISSUER}, audience
        L{TOKEN_AUDIENCE}, subject C{alice}, C{zid} C{tenant-a}, issued at
        L{TOKEN_NOW} and valid ten minutes, as C{claims} change them (a
        claim given as C{None} is left out).
        """
        body: dict[str, Any] = {
            "iss": TOKEN_ISSUER,
            "aud": TOKEN_AUDIENCE,
            "sub": "alice",
            "zid": "tenant-a",
            "iat": int(TOKEN_NOW),
            "exp": int(TOKEN_NOW) + 600,
        }
        body.update(claims)
        for name in [k for k, v in body.items() if v is None]:
            del body[name]
        head = {"alg": self.alg, "kid": self.kid, **(header or {})}
        with warnings.catch_warnings():
            # joserfc prefers RFC 9864's "Ed25519"; providers sign "EdDSA"
            warnings.simplefilter("ignore", SecurityWarning)
            return jwt.encode(head, body, self.key, algorithms=[self.alg]).encode("ascii")


def write_jwks(path: Path, *members: dict[str, Any]) -> None:
    """
    Write a JWKS of C{members} to C{path}.
    """
    path.write_text(json.dumps({"keys": list(members)}))


def unsigned_token(kid: str, claims: dict[str, Any]) -> bytes:
    """
    Return an C{alg: none} token of C{claims}.
    """
    return f"{jwt_segment({'alg': 'none', 'kid': kid})}.{jwt_segment(claims)}.".encode()


def hmac_token(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    """
    Return a token of C{header} and C{claims} signed with HMAC-SHA256 and
    C{secret}.
    """
    signing_input = f"{jwt_segment(header)}.{jwt_segment(claims)}".encode()
    return signing_input + b"." + b64url(hmac.new(secret, signing_input, hashlib.sha256).digest()).encode()


def token_claims(token: bytes) -> dict[str, Any]:
    """
    Return the claims of C{token}, unchecked.
    """
    payload = token.split(b".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    return result


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


def python_lines(f: Callable[[], _T]) -> tuple[_T, int]:
    """
    Call C{f}; return what it returned and how many lines of Python ran
    meanwhile, its callees' included.  A measure of work that, unlike the
    wall clock, is the same on every machine and under any load; work done
    in C (a regular expression, C{int()}) counts as the one line calling it.
    """
    count = 0

    def line(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return line

    previous = sys.gettrace()
    # every frame f opens gets the line counter (a tracer such as
    # coverage's is put back after)
    sys.settrace(lambda frame, event, arg: line)
    try:
        result = f()
    finally:
        sys.settrace(previous)
    return result, count
