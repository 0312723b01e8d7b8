"""
What the tests of the cache core's RFC 9111 behaviour share: one object
route on a registry over a memory store, a fake upstream whose answers the
test hands out and a task.Clock at a fixed HTTP date (L{Harness}).

Not a test module: test modules import from here, never from each other.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from apicache.cache.keys import CacheKey
from apicache.cache.policy import http_date
from apicache.cache.registry import CacheRegistry
from apicache.cache.tenant import CacheResult, FetchRequest
from apicache.config import RouteConfig, UpstreamConfig
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream

DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"
T0 = http_date(DATE)
ETAG = (b"etag", b'"v1"')
CT = (b"content-type", b"application/json")


def route(**kw):
    base = dict(ttl=10.0, params=("id",), fingerprint="f")
    base.update(kw)
    return RouteConfig("object", "/o/<id>", "/o/{id}", **base)


KEY = CacheKey("t1", "object", ("1",), "v")


def request(token=b"Bearer a", encoding=b"identity"):
    return FetchRequest("/o/1", [(b"authorization", token), (b"accept-encoding", encoding)], encoding)


class Harness(SynchronousTestCase):
    route = route()

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore(1 << 20)
        self.upstream = FakeUpstream()
        self.registry = CacheRegistry(
            self.store, self.upstream, self.clock, [self.route], (), upstream_config=UpstreamConfig()
        )

    def get(self, req=None):
        return self.registry.cache("t1", "object").get(KEY, req or request())

    def now(self, result) -> CacheResult:
        assert isinstance(result, CacheResult), result
        return result

    def answer(self, status=200, body=b"{}", headers=(CT, ETAG)):
        self.upstream.pending[0].respond(status, body, list(headers))

    def fetched(self, d, status=200, body=b"{}", headers=(CT, ETAG)) -> CacheResult:
        assert isinstance(d, Deferred)
        self.answer(status, body, headers)
        return self.successResultOf(d)
