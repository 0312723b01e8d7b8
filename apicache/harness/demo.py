"""
The demo upstream: a real HTTP server on loopback whose answers can be set
per path, and which records what it was asked.  ``make demo`` runs it
(``python -m apicache.harness.demo --port 9000``), and the tests that drive a real
daemon use it as their upstream.

It uses the standard library's threading HTTP server so that tests driving
the daemon with blocking clients don't need a reactor of their own.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["UpstreamStub", "Answer", "Seen", "main"]


@dataclass
class Answer:
    """
    How the stub answers a path.  ``body=None`` gives a JSON echo of the
    request (path, query, the ``authorization`` header's presence, a
    counter); ``delay`` waits before answering; ``drop`` closes the
    connection without an answer.  A 200 whose headers hold an ``ETag``
    answers ``304`` to a request whose ``If-None-Match`` is that tag.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    body: bytes | None = None
    delay: float = 0.0
    drop: bool = False
    #: when set, a request whose ``authorization`` differs gets a 401
    require_authorization: str | None = None


@dataclass
class Seen:
    """One request the stub received."""

    path: str
    headers: dict[str, str]


class _QuietServer(ThreadingHTTPServer):
    """Callers that give up (a timeout, a body too large) are expected."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class UpstreamStub:
    """
    A loopback upstream.  ``answers[path]`` (path without query) overrides
    the default echo; ``seen`` lists every request.
    """

    def __init__(self, port: int = 0, latency: float = 0.0) -> None:
        self.answers: dict[str, Answer] = {}
        self.default = Answer()
        self.latency = latency
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._count = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub._handle(self)

        self.server = _QuietServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> UpstreamStub:
        """
        Serve on a daemon thread; return this stub.
        """
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """
        Stop serving and close the listening socket.
        """
        self.server.shutdown()
        self.server.server_close()

    def calls(self, path: str | None = None) -> int:
        """
        Return how many requests arrived (for ``path``, query included or not).
        """
        with self._lock:
            if path is None:
                return len(self.seen)
            return sum(1 for s in self.seen if s.path == path or s.path.split("?")[0] == path)

    def set(self, path: str, **kwargs: Any) -> Answer:
        """
        Answer ``path`` (no query) as the keyword arguments of L{Answer} say.
        """
        a = Answer(**kwargs)
        self.answers[path] = a
        return a

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        with self._lock:
            self._count += 1
            n = self._count
            self.seen.append(Seen(path, {k.lower(): v for k, v in h.headers.items()}))
        a = self.answers.get(path.split("?")[0], self.default)
        delay = a.delay + self.latency
        if delay:
            time.sleep(delay)
        if a.drop:
            h.close_connection = True
            h.wfile.flush()
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if a.require_authorization is not None and h.headers.get("authorization") != a.require_authorization:
            a = Answer(401, {"Content-Type": "application/json", "WWW-Authenticate": "Bearer"}, b'{"error": "unauthorized"}')
        body = a.body
        if body is None:
            body = json.dumps(
                {
                    "path": path.split("?")[0],
                    "query": path.partition("?")[2],
                    "authorized": "authorization" in {k.lower() for k in h.headers},
                    "accept_language": h.headers.get("accept-language"),
                    "n": n,
                }
            ).encode()
        etag = {k.lower(): v for k, v in a.headers.items()}.get("etag")
        if a.status == 200 and etag is not None and h.headers.get("if-none-match") == etag:
            # a real server's answer to a revalidation (RFC 9110 section 13.1.2)
            h.send_response(304)
            h.send_header("ETag", etag)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(a.status)
        for k, v in a.headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def main() -> None:
    """
    Run the stub as the demo upstream until interrupted.
    """
    p = argparse.ArgumentParser(prog="python -m apicache.harness.demo", description="apicache's demo upstream")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--latency", type=float, default=0.05, help="seconds to wait before each answer")
    args = p.parse_args()
    stub = UpstreamStub(args.port, latency=args.latency)
    print(f"demo upstream on {stub.url} (latency {args.latency:g} s)", flush=True)
    try:
        stub.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
