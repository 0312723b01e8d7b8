"""
The benchmark's other servers, each run in a process of its own:

- ``upstream``: the external API, answering every path with a 1 KiB JSON
  body after a fixed latency (``callLater``, not a thread per request), and
  counting what it was asked (``GET /_calls``);
- ``bare``: the framework ceiling, a bare twisted.web Resource answering the
  same bytes from a dict.

``python bench/servers.py upstream --port 9000 --latency 0.02``
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from typing import Any
from urllib.parse import parse_qs

from twisted.internet import reactor
from twisted.web import server
from twisted.web.resource import Resource

BODY_BYTES = 1024


def body_for(path: bytes) -> bytes:
    """
    Return the 1 KiB JSON body every target answers ``path`` with.
    """
    head = json.dumps({"path": path.decode("latin-1"), "pad": ""}).encode()
    pad = BODY_BYTES - len(head)
    if pad < 0:
        return head
    return json.dumps({"path": path.decode("latin-1"), "pad": "x" * pad}).encode()


def etag_for(body: bytes) -> bytes:
    """
    Return the C{ETag} the upstream sends with ``body``.
    """
    return b'"%08x"' % zlib.crc32(body)


class Upstream(Resource):
    """
    Every path: 200, ``application/json``, ``body_for(path)`` after
    ``latency`` seconds (``?delay_ms=N`` adds to it).  ``/_calls`` answers
    the number of requests per path.
    """

    isLeaf = True

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency
        self.calls: dict[str, int] = {}
        self.total = 0

    def render_GET(self, request: Any) -> Any:
        path = request.path
        if path == b"/_calls":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"total": self.total, "paths": self.calls}).encode()
        self.total += 1
        p = path.decode("latin-1")
        self.calls[p] = self.calls.get(p, 0) + 1
        delay = self.latency
        query = request.uri.partition(b"?")[2]
        if query:
            extra = parse_qs(query.decode("latin-1")).get("delay_ms")
            if extra:
                delay += float(extra[0]) / 1000
        body = body_for(path)

        def answer() -> None:
            if request._disconnected:
                return
            request.setHeader(b"content-type", b"application/json")
            # a validator, as most APIs send: the bench's conditional requests match it
            request.setHeader(b"etag", etag_for(body))
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        reactor.callLater(delay, answer)
        return server.NOT_DONE_YET


class Bare(Resource):
    """
    The framework ceiling: the bodies in a dict, filled on first use.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: dict[bytes, bytes] = {}

    def render_GET(self, request: Any) -> bytes:
        body = self.bodies.get(request.path)
        if body is None:
            body = self.bodies[request.path] = body_for(request.path)
        request.setHeader(b"content-type", b"application/json")
        return body


class QuietSite(server.Site):
    """No access log: like every other target."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("kind", choices=["upstream", "bare"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--latency", type=float, default=0.02)
    args = p.parse_args(argv)
    root: Resource = Upstream(args.latency) if args.kind == "upstream" else Bare()
    reactor.listenTCP(args.port, QuietSite(root), backlog=2048, interface="127.0.0.1")
    print(f"{args.kind} ready on {args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
