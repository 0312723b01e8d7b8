"""
Measuring wrappers: components wrapped here count into L{Metrics} without
knowing about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from apicache.ops.metrics import Metrics
from apicache.ops.tracing import current_trace
from apicache.upstream.client import IUpstream, Overloaded, UpstreamResponse, UpstreamTimeout

__all__ = ["TimedUpstream"]


@implementer(IUpstream)
class TimedUpstream:
    """
    An L{IUpstream} that times each answer into the upstream latency
    histogram and counts failures by kind, and records the status and time
    on the trace of the request that made the call (for its access log
    line).
    """

    def __init__(self, upstream: IUpstream, metrics: Metrics, clock: IReactorTime) -> None:
        self._upstream = upstream
        self._metrics = metrics
        self._clock = clock

    @property
    def in_flight(self) -> int:
        return self._upstream.in_flight  # type: ignore[no-any-return]

    def fetch(
        self, path: str, headers: Sequence[tuple[bytes, bytes]], *, tenant: str, **kwargs: Any
    ) -> Deferred[UpstreamResponse]:
        """
        Like the wrapped upstream's ``fetch`` (``kwargs`` passed on), measured.
        """
        started = self._clock.seconds()
        # the request whose handling started this fetch (the coroutine runs
        # in a copy of its context); a coalesced waiter made no call
        trace = current_trace()
        try:
            d = self._upstream.fetch(path, headers, tenant=tenant, **kwargs)
        except Overloaded:
            # IUpstream delivers Overloaded as an errback; an implementation
            # raising it anyway is counted the same and turned into one
            d = fail()

        def answered(response: UpstreamResponse) -> UpstreamResponse:
            took = self._clock.seconds() - started
            self._metrics.observe_upstream(took)
            if trace is not None:
                trace.upstream_status = response.status
                trace.upstream_s = took
            return response

        def failed(f: Failure) -> Failure:
            if f.check(UpstreamTimeout):
                kind = "timeout"
            elif f.check(Overloaded):
                kind = "overloaded"
            else:
                kind = "unreachable"
            self._metrics.count_upstream_error(kind)
            if trace is not None:
                trace.upstream_error = kind
                trace.upstream_s = self._clock.seconds() - started
            return f

        return d.addCallbacks(answered, failed)

    def close(self) -> Deferred[None]:
        return self._upstream.close()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._upstream, name)
