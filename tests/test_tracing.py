"""
W3C trace context: continued from the caller or started, and in log lines.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from apicache.ops.logs import JSONLineObserver
from apicache.ops.tracing import Tracer, enter, leave, parse_traceparent, tracer_from_environ

VALID = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACEPARENT_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def test_valid_traceparent_is_parsed():
    assert parse_traceparent([VALID]) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01")


def test_invalid_traceparents_are_refused():
    for bad in [
        b"",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    ]:
        assert parse_traceparent([bad]) is None, bad
    assert parse_traceparent([VALID, VALID]) is None
    assert parse_traceparent(None) is None


def test_future_version_with_more_fields_is_accepted():
    assert parse_traceparent([b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more"]) is not None


def test_callers_trace_is_continued_with_a_new_span():
    t = Tracer().start(Headers({b"traceparent": [VALID]}), "x")
    assert t.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert t.parent_id == "b7ad6b7169203331"
    assert t.span_id != t.parent_id
    assert t.traceparent().decode().startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert TRACEPARENT_RE.match(t.traceparent().decode())


def test_missing_or_invalid_traceparent_starts_a_trace_and_drops_tracestate():
    h = Headers({b"traceparent": [b"garbage"], b"tracestate": [b"k=v"]})
    t = Tracer().start(h, "x")
    assert TRACEPARENT_RE.match(t.traceparent().decode())
    assert t.parent_id is None
    assert not h.hasHeader(b"tracestate")
    assert Tracer().start(Headers(), "x").trace_id != Tracer().start(Headers(), "x").trace_id


def test_log_lines_carry_the_current_trace_id():
    out = io.StringIO()
    log = Logger(observer=JSONLineObserver(out))
    token = enter("0af7651916cd43dd8448eb211c80319c")
    try:
        log.info("inside")
    finally:
        leave(token)
    log.info("outside")
    inside, outside = [json.loads(line) for line in out.getvalue().splitlines()]
    assert inside["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "trace_id" not in outside


def test_no_otel_endpoint_means_plain_tracer():
    assert type(tracer_from_environ({})) is Tracer


@pytest.mark.integration
def test_opentelemetry_is_not_imported_without_an_endpoint():
    import subprocess
    import sys

    code = (
        "import os, sys; os.environ.pop('OTEL_EXPORTER_OTLP_ENDPOINT', None)\n"
        "import apicache.tap, apicache.http.api, apicache.http.channel, apicache.ops.tracing\n"
        "apicache.ops.tracing.tracer_from_environ({})\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.integration
def test_spans_are_exported_to_an_otlp_endpoint(make_daemon, upstream):
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, a server span per request reaches a loopback collector."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from apicache.harness.polling import wait_until

    spans: list = []

    class Collector(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    spans.extend(ss.spans)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        d = make_daemon(env=env)
        r = d.get("/server/object(7)/header", traceparent=VALID.decode())
        assert r.status == 200
        wait_until(lambda: spans, 10, 0.05, "the daemon to export a span")
        assert d.stop() in (0, -15)
    finally:
        server.shutdown()
        server.server_close()
    span = next(s for s in spans if s.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c")
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
    assert span.name == "GET object"
    sent = upstream.seen[0].headers["traceparent"]
    assert sent == f"00-0af7651916cd43dd8448eb211c80319c-{span.span_id.hex()}-01"
    d.log_lines()  # every line still JSON
