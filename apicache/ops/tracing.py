"""
Tracing: the W3C ``traceparent`` of each request, taken from the caller or
created, forwarded to the upstream with apicache's own span id, and written
into the request's log lines as ``trace_id``.

Spans are exported with OpenTelemetry only when the ``otel`` extra is
installed and ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; otherwise nothing of
OpenTelemetry is imported and a request pays for two random numbers.

A leaf module: the HTTP layer calls L{Tracer.start} and L{Tracer.end}; the
log observer reads L{current_trace_id}.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from apicache._twisted import raw_headers

__all__ = [
    "RequestTrace",
    "Tracer",
    "OpenTelemetryTracer",
    "tracer_from_environ",
    "parse_traceparent",
    "current_trace_id",
    "current_trace",
    "enter",
    "leave",
    "TracerService",
    "NEW_TRACE_ID",
    "new_trace_id",
]

_TRACEPARENT_RE = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16

_current: ContextVar[RequestTrace | None] = ContextVar("apicache_trace", default=None)


def current_trace_id() -> str | None:
    """
    Return the trace id of the request being handled, or ``None``.
    """
    trace = _current.get()
    return None if trace is None else trace.trace_id


def current_trace() -> RequestTrace | None:
    """
    Return the trace of the request being handled (what its upstream call
    is recorded on, see L{RequestTrace.upstream_status}), or ``None``.
    """
    return _current.get()


def enter(trace: RequestTrace | str) -> Token[RequestTrace | None]:
    """
    Make ``trace`` (or a trace of that id) current, for log lines and the
    upstream call's record; return the token for L{leave}.

    What runs under it, coroutines started meanwhile included (Twisted
    runs each in a copy of the context it started in), sees it.
    """
    if isinstance(trace, str):
        trace = RequestTrace(trace, "", None, "00")
    return _current.set(trace)


def leave(token: Token[RequestTrace | None]) -> None:
    """
    Restore the trace that was current before L{enter}.
    """
    _current.reset(token)


def parse_traceparent(values: Sequence[bytes] | None) -> tuple[str, str, str] | None:
    """
    Return ``(trace id, parent span id, flags)`` of a valid W3C
    ``traceparent`` (one header value), else ``None``.
    """
    if not values or len(values) != 1:
        return None
    m = _TRACEPARENT_RE.match(values[0].strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == b"ff" or (version == b"00" and rest) or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id.decode(), parent_id.decode(), flags.decode()


def _random_id(bits: int) -> str:
    if bits == 128:
        # a trace id for every logged request that came without one: drawn
        # 256 at a time, a tenth of the cost of drawing each
        ids = _TRACE_IDS
        if not ids:
            _draw_trace_ids()
        return ids.pop()
    n = 0
    while n == 0:
        n = random.getrandbits(bits)
    return f"{n:0{bits // 4}x}"


_TRACE_IDS: list[str] = []
_ZERO_ID = "0" * 32

#: The trace id of a request that starts a new trace, as a request hands it
#: to its access line when nothing else reads it: drawn (L{new_trace_id})
#: when the line is written, with no L{RequestTrace} made for it.
NEW_TRACE_ID = ""


def new_trace_id() -> str:
    """
    Return a new trace id: 32 hex digits, not all zero.
    """
    return _random_id(128)


def _draw_trace_ids(n: int = 256) -> None:
    text = random.getrandbits(128 * n).to_bytes(16 * n, "big").hex()
    # an all-zero id is not a trace id (W3C): left out
    _TRACE_IDS.extend([i for i in [text[k : k + 32] for k in range(0, 32 * n, 32)] if i != _ZERO_ID])


# a worker forked with ids drawn must not write the same ones as its parent
# (random itself is reseeded in the child)
os.register_at_fork(after_in_child=_TRACE_IDS.clear)


def _raw_name(name: bytes) -> bytes:
    # as twisted.web keys a Headers object's raw table (b"Traceparent")
    return next(iter(Headers({name: [b""]}).getAllRawHeaders()))[0]


_RAW_TRACEPARENT = _raw_name(b"traceparent")
_RAW_TRACESTATE = _raw_name(b"tracestate")


class RequestTrace:
    """
    One request's place in a trace.

    @ivar trace_id: 32 hex digits, the caller's or new.
    @ivar span_id: apicache's span for this request (16 hex digits): the
        parent id the upstream sees.
    @ivar parent_id: the caller's span id, or ``None`` for a new trace.
    @ivar flags: the trace flags (2 hex digits).
    @ivar upstream_status: the status of the upstream answer this request's
        own upstream call got (not set when it waited for another caller's
        fetch, or answered from the cache), C{None} otherwise or when the
        call failed.
    @ivar upstream_s: how long that call took, seconds, or C{None} when no
        call was made.
    @ivar upstream_error: the kind of failure of that call (``timeout``,
        ``unreachable``, ``overloaded``), or C{None}.
    """

    __slots__ = ("_trace_id", "_span_id", "parent_id", "flags", "span", "upstream_status", "upstream_s", "upstream_error")

    def __init__(
        self, trace_id: str | None, span_id: str | None, parent_id: str | None, flags: str, span: Any = None
    ) -> None:
        # ids not given are drawn when first read: a hit that writes no log
        # line and calls no upstream never needs them
        self._trace_id = trace_id
        self._span_id = span_id
        self.parent_id = parent_id
        self.flags = flags
        self.span = span
        self.upstream_status: int | None = None
        self.upstream_s: float | None = None
        self.upstream_error: str | None = None

    @property
    def trace_id(self) -> str:
        """
        The trace id: 32 hex digits, the caller's or new.
        """
        if self._trace_id is None:
            self._trace_id = _random_id(128)
        return self._trace_id

    @property
    def span_id(self) -> str:
        """
        apicache's span id for this request: 16 hex digits.
        """
        if self._span_id is None:
            self._span_id = _random_id(64)
        return self._span_id

    def traceparent(self) -> bytes:
        """
        Return the ``traceparent`` value to send to the upstream.
        """
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}".encode("ascii")


class Tracer:
    """
    Trace ids without export: continues the caller's trace or starts one.
    """

    def start(self, headers: Headers, name: str) -> RequestTrace:
        """
        Return the trace of a request with ``headers``; a missing or invalid
        ``traceparent`` starts a new trace (and drops ``tracestate``, as the
        W3C recommendation says).
        """
        # twisted.web's table of raw headers, read directly: getRawHeaders
        # and removeHeader encode the name again on every call (hit path)
        raw = raw_headers(headers)
        parsed = parse_traceparent(raw.get(_RAW_TRACEPARENT) or None)
        if parsed is None:
            raw.pop(_RAW_TRACESTATE, None)
            return RequestTrace(None, None, None, "01")
        trace_id, parent_id, flags = parsed
        return RequestTrace(trace_id, None, parent_id, flags)

    def end(self, trace: RequestTrace, name: str, attributes: Mapping[str, Any]) -> None:
        """
        The request is answered.
        """

    def close(self) -> None:
        """
        Flush and stop exporting.
        """


class OpenTelemetryTracer(Tracer):
    """
    Exports a server span per request over OTLP/HTTP (the ``otel`` extra),
    configured by the standard ``OTEL_*`` environment variables.
    """

    log = Logger()

    def __init__(self, service_name: str = "apicache") -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("apicache")
        self._propagator = TraceContextTextMapPropagator()
        self._server = SpanKind.SERVER

    def start(self, headers: Headers, name: str) -> RequestTrace:
        parsed = parse_traceparent(headers.getRawHeaders(b"traceparent"))
        carrier: dict[str, str] = {}
        if parsed is not None:
            carrier["traceparent"] = headers.getRawHeaders(b"traceparent", [b""])[0].decode("ascii")
            state = headers.getRawHeaders(b"tracestate")
            if state:
                carrier["tracestate"] = b",".join(state).decode("latin-1")
        else:
            headers.removeHeader(b"tracestate")
        span = self._tracer.start_span(name, context=self._propagator.extract(carrier), kind=self._server)
        ctx = span.get_span_context()
        return RequestTrace(
            f"{ctx.trace_id:032x}",
            f"{ctx.span_id:016x}",
            parsed[1] if parsed else None,
            f"{int(ctx.trace_flags):02x}",
            span,
        )

    def end(self, trace: RequestTrace, name: str, attributes: Mapping[str, Any]) -> None:
        span = trace.span
        if span is None:
            return
        span.update_name(name)
        for k, v in attributes.items():
            span.set_attribute(k, v)
        span.end()

    def close(self, wait: float = 2.0) -> None:
        # the exporter may block for its own timeout on an unreachable
        # collector: flush on a thread and wait no longer than ``wait``
        import threading

        t = threading.Thread(target=self._provider.shutdown, name="otel-shutdown", daemon=True)
        t.start()
        t.join(wait)


def tracer_from_environ(environ: Mapping[str, str]) -> Tracer:
    """
    Return an L{OpenTelemetryTracer} when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
    its traces variant) is set and the ``otel`` extra is installed, else a
    plain L{Tracer}.
    """
    if not (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return Tracer()
    try:
        return OpenTelemetryTracer(environ.get("OTEL_SERVICE_NAME", "apicache"))
    except ImportError as e:
        Logger(namespace="apicache.ops.tracing").warn(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
            "(pip install 'apicache[otel]'): spans are not exported ({error})",
            error=str(e),
        )
        return Tracer()


class TracerService(Service):
    """
    Flushes the spans not yet exported when the daemon stops (after HTTP
    has drained, so the last requests' spans are among them).
    """

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def stopService(self) -> None:
        Service.stopService(self)
        self.tracer.close()
